package main

import (
	"testing"
	"time"
)

func str(s string) *string { return &s }

func put(id, client int, key, value string, call, ret int64, ok bool, version uint64) Op {
	return Op{ID: id, Client: client, Kind: "put", Key: key, Value: value, CallNs: call, ReturnNs: ret, Ok: ok, Version: version}
}

func del(id, client int, key string, call, ret int64, ok bool, version uint64) Op {
	return Op{ID: id, Client: client, Kind: "delete", Key: key, CallNs: call, ReturnNs: ret, Ok: ok, Version: version}
}

func get(id, client int, key string, call, ret int64, read *string, version uint64) Op {
	return Op{ID: id, Client: client, Kind: "get", Key: key, CallNs: call, ReturnNs: ret, Ok: true, Read: read, Version: version, Intact: true}
}

func store(key string, read *string) Final {
	return Final{Key: key, Source: "store", AtNs: 1000, Ok: true, Read: read, Intact: true}
}

func kinds(t *testing.T, h History) []string {
	t.Helper()
	r := check(h, 10*time.Second, nil)
	var out []string
	for _, a := range r.Anomalies {
		out = append(out, a.Kind)
	}
	return out
}

func expect(t *testing.T, h History, want ...string) {
	t.Helper()
	got := kinds(t, h)
	if len(got) != len(want) {
		t.Fatalf("anomalies %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("anomalies %v, want %v", got, want)
		}
	}
}

func TestTheLastAcknowledgedWriteInTheStoreIsFine(t *testing.T) {
	expect(t, History{
		Ops:   []Op{put(0, 0, "k", "a", 1, 2, true, 10), put(1, 1, "k", "b", 3, 4, true, 20)},
		Final: []Final{store("k", str("b"))},
	})
}

func TestAnOverwrittenAcknowledgedWriteInTheStoreIsALostWrite(t *testing.T) {
	expect(t, History{
		Ops:   []Op{put(0, 0, "k", "a", 1, 2, true, 10), put(1, 1, "k", "b", 3, 4, true, 20)},
		Final: []Final{store("k", str("a"))},
	}, "final-state")
}

func TestConcurrentAcknowledgedWritesMayEndEitherWay(t *testing.T) {
	for _, winner := range []string{"a", "b"} {
		expect(t, History{
			Ops:   []Op{put(0, 0, "k", "a", 1, 5, true, 10), put(1, 1, "k", "b", 2, 4, true, 20)},
			Final: []Final{store("k", str(winner))},
		})
	}
}

func TestAnIndeterminateWriteMayWinOnlyOverWhatItOverlapped(t *testing.T) {
	// The failed put of "x" ran from 3 to 6; the acknowledged "b" started at 5: either may win.
	expect(t, History{
		Ops:   []Op{put(0, 0, "k", "a", 1, 2, true, 10), put(1, 1, "k", "x", 3, 6, false, 0), put(2, 0, "k", "b", 5, 7, true, 30)},
		Final: []Final{store("k", str("x"))},
	})
	// It may also never have happened.
	expect(t, History{
		Ops:   []Op{put(0, 0, "k", "a", 1, 2, true, 10), put(1, 1, "k", "x", 3, 4, false, 0)},
		Final: []Final{store("k", str("a"))},
	})
	// But it cannot overwrite an acknowledged put that started after it failed.
	expect(t, History{
		Ops:   []Op{put(0, 1, "k", "x", 1, 2, false, 0), put(1, 0, "k", "b", 3, 4, true, 30)},
		Final: []Final{store("k", str("x"))},
	}, "final-state")
}

func TestAnAcknowledgedDeleteThatComesBackIsAnAnomaly(t *testing.T) {
	h := History{
		Ops:   []Op{put(0, 0, "k", "a", 1, 2, true, 10), del(1, 1, "k", 3, 4, true, 20)},
		Final: []Final{store("k", str("a"))},
	}
	expect(t, h, "final-state")
	h.Final = []Final{store("k", nil)}
	expect(t, h)
	// A put overwritten by a later acknowledged put is lost, delete or no delete.
	h.Ops = append(h.Ops, put(2, 0, "k", "b", 5, 6, true, 30), put(3, 1, "k", "c", 7, 8, true, 40))
	h.Final = []Final{store("k", str("b"))}
	expect(t, h, "final-state")
}

func TestAFinalReadThroughAClientMustAgreeWithTheStore(t *testing.T) {
	expect(t, History{
		Ops: []Op{put(0, 0, "k", "a", 1, 2, true, 10), put(1, 1, "k", "b", 3, 4, true, 20)},
		Final: []Final{store("k", str("b")),
			{Key: "k", Source: "client0", AtNs: 1100, Ok: true, Read: str("a"), Version: 10, Intact: true}},
	}, "final-state")
}

func TestReadsMustNotBeOlderThanTheReadersOwnWrites(t *testing.T) {
	base := []Op{put(0, 0, "k", "a", 1, 2, true, 10), put(1, 0, "k", "b", 3, 4, true, 20)}
	final := []Final{store("k", str("b"))}
	// Its own newer write: fine. Another client reading the older one: not promised, fine.
	expect(t, History{Ops: append(base, get(2, 0, "k", 5, 6, str("b"), 20), get(3, 1, "k", 5, 6, str("a"), 10)), Final: final})
	// The writer itself reading the older value: stale.
	expect(t, History{Ops: append(base, get(2, 0, "k", 5, 6, str("a"), 10)), Final: final}, "stale-own-write")
	// Not-found after its own put, with no delete anywhere: stale.
	expect(t, History{Ops: append(base, get(2, 0, "k", 5, 6, nil, 0)), Final: final}, "stale-own-write")
	// Not-found explained by another client's delete that may be newer: fine.
	expect(t, History{
		Ops:   append(base, del(2, 1, "k", 5, 9, false, 0), get(3, 0, "k", 6, 7, nil, 0)),
		Final: []Final{store("k", str("b"))},
	})
	// A value older than its own delete: stale.
	expect(t, History{
		Ops:   []Op{put(0, 0, "k", "a", 1, 2, true, 10), del(1, 0, "k", 3, 4, true, 20), get(2, 0, "k", 5, 6, str("a"), 10)},
		Final: []Final{store("k", nil)},
	}, "stale-own-write")
}

func TestPhantomCorruptAndFutureReads(t *testing.T) {
	ops := []Op{put(0, 0, "k", "a", 1, 2, true, 10), get(1, 1, "k", 3, 4, str("zzz"), 99)}
	expect(t, History{Ops: ops, Final: []Final{store("k", str("a"))}}, "phantom")
	torn := get(1, 1, "k", 3, 4, str("a"), 10)
	torn.Intact = false
	expect(t, History{Ops: []Op{ops[0], torn}, Final: []Final{store("k", str("a"))}}, "corrupt")
	early := []Op{get(0, 1, "k", 1, 2, str("a"), 10), put(1, 0, "k", "a", 3, 4, true, 10)}
	expect(t, History{Ops: early, Final: []Final{store("k", str("a"))}}, "future")
}
