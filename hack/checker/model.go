package main

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The final-state check. Per key, porcupine decides whether the acknowledged and indeterminate
// mutations, and the reads made after the run, fit a register:
//
//   - the state is the value id the key holds ("" = absent); it starts absent;
//   - an acknowledged put (delete) sets it, at one instant between its invocation and completion;
//   - an indeterminate put or delete (failed, timed out) may set it at such an instant, or never;
//   - a read after the run must return the state.
//
// So the final state is the effect of the last mutation in some order that respects real time: an
// acknowledged write is there unless a later acknowledged (or possibly-applied) mutation replaced
// it, and an acknowledged delete is never undone (deletes leave a tombstone in the store, so an
// older write flushed late cannot bring the key back). An indeterminate write may win only over mutations it overlapped or followed, because its
// version was assigned while it ran (ADR 0002: the store keeps the highest version). Reads made
// during the run are not part of this check; ADR 0002 allows a reader of another client to see an
// older version during a failover, and the session checks cover what it does promise.

type regInput struct {
	Kind    string // "put", "delete" or "read"
	Value   string // put: the value id
	Certain bool   // put/delete: acknowledged
}

var registerModel = porcupine.NondeterministicModel{
	Init: func() []interface{} { return []interface{}{""} },
	Step: func(state, input, output interface{}) []interface{} {
		s, in := state.(string), input.(regInput)
		switch in.Kind {
		case "read":
			if output.(string) == s {
				return []interface{}{s}
			}
			return nil
		case "put", "delete":
			next := in.Value // "" for a delete
			if in.Certain {
				return []interface{}{next}
			}
			return []interface{}{s, next}
		}
		return nil
	},
	Hash: func(state interface{}) uint64 {
		h := fnv.New64a()
		h.Write([]byte(state.(string)))
		return h.Sum64()
	},
	DescribeOperation: func(input, output interface{}) string {
		in := input.(regInput)
		switch in.Kind {
		case "read":
			return fmt.Sprintf("final read -> %s", describe(output.(string)))
		case "put":
			return fmt.Sprintf("put(%s) certain=%v", in.Value, in.Certain)
		}
		return fmt.Sprintf("delete certain=%v", in.Certain)
	},
	DescribeState: func(state interface{}) string { return describe(state.(string)) },
}

// finalStateOps is the porcupine history of one key: its mutations and its successful final reads.
// With deletesCertain false, an acknowledged delete may have been undone (ADR 0002's known limit).
func finalStateOps(ops []Op, finals []Final, deletesCertain bool) []porcupine.Operation {
	var out []porcupine.Operation
	for _, op := range ops {
		switch op.Kind {
		case "put", "delete":
			out = append(out, porcupine.Operation{
				ClientId: op.Client,
				Input:    regInput{Kind: op.Kind, Value: op.Value, Certain: op.Ok && (op.Kind == "put" || deletesCertain)},
				Call:     op.CallNs,
				Output:   "",
				Return:   op.ReturnNs,
			})
		}
	}
	for _, f := range finals {
		if !f.Ok {
			continue
		}
		out = append(out, porcupine.Operation{
			ClientId: 0,
			Input:    regInput{Kind: "read"},
			Call:     f.AtNs,
			Output:   absent(f.Read),
			Return:   f.AtNs + 1,
		})
	}
	return out
}

// checkFinalState runs porcupine on every key and explains each key it finds illegal. The notes
// are the keys where only the strict model (acknowledged deletes never undone) fails.
func checkFinalState(h History, timeout time.Duration, visualize func(key string, info porcupine.LinearizationInfo)) (anomalies, notes []Anomaly, verdicts map[string]string) {
	model := registerModel.ToModel()
	opsByKey, finalsByKey := map[string][]Op{}, map[string][]Final{}
	for _, op := range h.Ops {
		opsByKey[op.Key] = append(opsByKey[op.Key], op)
	}
	for _, f := range h.Final {
		finalsByKey[f.Key] = append(finalsByKey[f.Key], f)
	}
	keys := make([]string, 0, len(finalsByKey))
	for k := range finalsByKey {
		keys = append(keys, k)
	}
	for k := range opsByKey {
		if _, ok := finalsByKey[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	verdicts = map[string]string{}
	for _, key := range keys {
		ops, finals := opsByKey[key], finalsByKey[key]
		// Deletes leave a tombstone in the store (ADR 0001), so an acknowledged delete is certain.
		result, info := porcupine.CheckOperationsVerbose(model, finalStateOps(ops, finals, true), timeout)
		verdicts[key] = string(result)
		switch result {
		case porcupine.Illegal:
			anomalies = append(anomalies, Anomaly{Kind: "final-state", Key: key, Message: explainFinal(ops, finals)})
			if visualize != nil {
				visualize(key, info)
			}
		}
	}
	return anomalies, notes, verdicts
}

// explainFinal says what the final reads saw and which acknowledged mutations were the last ones
// (no acknowledged mutation of the key started after they completed).
func explainFinal(ops []Op, finals []Final) string {
	var last []string
	for _, a := range ops {
		if a.Kind == "get" || !a.Ok {
			continue
		}
		superseded := false
		for _, b := range ops {
			if b.Kind != "get" && b.Ok && b.CallNs > a.ReturnNs {
				superseded = true
				break
			}
		}
		if !superseded {
			last = append(last, fmt.Sprintf("#%d %s(%s) v%d by client %d, acked at %s", a.ID, a.Kind, describe(a.Value), a.Version, a.Client, ms(a.ReturnNs)))
		}
	}
	var seen []string
	for _, f := range finals {
		if f.Ok {
			seen = append(seen, fmt.Sprintf("%s: %s v%d", f.Source, describe(absent(f.Read)), f.Version))
		} else {
			seen = append(seen, fmt.Sprintf("%s: failed (%s)", f.Source, f.Error))
		}
	}
	return fmt.Sprintf("no order of the mutations explains the final reads [%s]; the last acknowledged mutations were [%s]",
		strings.Join(seen, "; "), strings.Join(last, "; "))
}

func ms(ns int64) string {
	return fmt.Sprintf("%.3fs", float64(ns)/1e9)
}
