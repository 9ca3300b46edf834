package main

import (
	"fmt"
	"sort"
)

// The checks that need no search, over every read (during the run and after it):
//
//   - phantom: a read returned a value no put of that key wrote;
//   - corrupt: a read returned bytes other than what the put of that value wrote;
//   - future: a read returned a value whose put started only after the read completed;
//   - stale-own-write: a read returned something older than the reader's own last acknowledged
//     put or delete of the key (older = a lower version; not-found after an acknowledged put is
//     older unless some delete of the key that is not known to be older may have run).

type mutation struct {
	op      Op
	deleted bool
}

func checkSessions(h History) []Anomaly {
	puts := map[string]map[string]Op{} // key -> value id -> put
	var deletes []Op
	for _, op := range h.Ops {
		switch op.Kind {
		case "put":
			if puts[op.Key] == nil {
				puts[op.Key] = map[string]Op{}
			}
			puts[op.Key][op.Value] = op
		case "delete":
			deletes = append(deletes, op)
		}
	}
	var anomalies []Anomaly
	add := func(kind, key string, id *int, format string, args ...interface{}) {
		anomalies = append(anomalies, Anomaly{Kind: kind, Key: key, Op: id, Message: fmt.Sprintf(format, args...)})
	}
	// checkValue covers phantom, corrupt and future reads; it returns the put that was read, if any.
	checkValue := func(key string, id *int, what string, read *string, intact bool, returnNs int64) (Op, bool) {
		if read == nil {
			return Op{}, false
		}
		put, ok := puts[key][*read]
		if !ok {
			add("phantom", key, id, "%s returned %q, which no put of %s wrote", what, *read, key)
			return Op{}, false
		}
		if !intact {
			add("corrupt", key, id, "%s returned the value %s with other bytes than its put (#%d) wrote", what, *read, put.ID)
		}
		if put.CallNs > returnNs {
			add("future", key, id, "%s completed at %s but returned %s, whose put (#%d) started at %s", what, ms(returnNs), *read, put.ID, ms(put.CallNs))
		}
		return put, true
	}

	ops := append([]Op(nil), h.Ops...)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].CallNs < ops[j].CallNs })
	lastOwn := map[int]map[string]mutation{} // client -> key -> its last acknowledged mutation
	for _, op := range ops {
		id := op.ID
		switch op.Kind {
		case "put", "delete":
			if op.Ok {
				if lastOwn[op.Client] == nil {
					lastOwn[op.Client] = map[string]mutation{}
				}
				lastOwn[op.Client][op.Key] = mutation{op: op, deleted: op.Kind == "delete"}
			}
		case "get":
			if !op.Ok {
				continue
			}
			what := fmt.Sprintf("get #%d by client %d", op.ID, op.Client)
			checkValue(op.Key, &id, what, op.Read, op.Intact, op.ReturnNs)
			own, ok := lastOwn[op.Client][op.Key]
			if !ok {
				continue
			}
			if stale := staleness(own, op, deletes); stale != "" {
				add("stale-own-write", op.Key, &id, "%s: %s", what, stale)
			}
		}
	}
	for _, f := range h.Final {
		if f.Ok {
			checkValue(f.Key, nil, "final read from "+f.Source, f.Read, f.Intact, f.AtNs)
		}
	}
	return anomalies
}

// staleness says why a read is older than the reader's own last acknowledged mutation, or "".
func staleness(own mutation, read Op, deletes []Op) string {
	mine := fmt.Sprintf("its own %s #%d (v%d)", own.op.Kind, own.op.ID, own.op.Version)
	if read.Read == nil {
		if own.deleted {
			return ""
		}
		for _, d := range deletes {
			if d.Key == read.Key && d.CallNs <= read.ReturnNs && !(d.Ok && d.Version < own.op.Version) {
				return "" // a delete that may be newer could explain the not-found
			}
		}
		return fmt.Sprintf("returned not-found after %s, and no delete that may be newer ran", mine)
	}
	if read.Version < own.op.Version {
		return fmt.Sprintf("returned %s v%d, older than %s", *read.Read, read.Version, mine)
	}
	if read.Version == own.op.Version && (own.deleted || *read.Read != own.op.Value) {
		return fmt.Sprintf("returned %s v%d, the version of %s but not its value", *read.Read, read.Version, mine)
	}
	return ""
}
