package main

// The history the fault test records (proxy/tests/fault/history.rs writes the same JSON).

// Op is one operation of one client: its invocation, its completion and what it returned.
type Op struct {
	ID     int    `json:"id"`
	Client int    `json:"client"`
	Kind   string `json:"kind"` // "put", "delete" or "get"
	Key    string `json:"key"`
	// Value is the id of the value a put wrote (unique per put).
	Value string `json:"value,omitempty"`
	// CallNs and ReturnNs are the invocation and completion times, in ns since the run started.
	CallNs   int64 `json:"call_ns"`
	ReturnNs int64 `json:"return_ns"`
	// Ok is true when the operation was acknowledged (a get: answered). A failed or timed-out
	// operation is indeterminate: it may or may not have taken effect.
	Ok    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Version is what an acknowledged put or delete returned, or the version a get read.
	Version uint64 `json:"version,omitempty"`
	// Read is the id of the value a get returned, nil for not-found.
	Read *string `json:"read,omitempty"`
	// Intact is false when a get's bytes were not exactly what the put of that value wrote.
	Intact bool `json:"intact"`
}

// Final is a read made after the run, once every fault was healed and every proxy had flushed.
type Final struct {
	Key string `json:"key"`
	// Source is "store" (the object store itself) or "client<N>" (a read through a client).
	Source  string  `json:"source"`
	AtNs    int64   `json:"at_ns"`
	Ok      bool    `json:"ok"`
	Error   string  `json:"error,omitempty"`
	Read    *string `json:"read,omitempty"`
	Version uint64  `json:"version,omitempty"`
	Intact  bool    `json:"intact"`
}

// History is the checker's input.
type History struct {
	Seed  uint64  `json:"seed"`
	Ops   []Op    `json:"ops"`
	Final []Final `json:"final"`
}

// Anomaly is one violation of the model, with enough context to find it in the logs.
type Anomaly struct {
	Kind    string `json:"kind"`
	Key     string `json:"key"`
	Op      *int   `json:"op,omitempty"`
	Message string `json:"message"`
}

// Report is the checker's output.
type Report struct {
	Anomalies []Anomaly `json:"anomalies"`
	// Notes are what ADR 0002 allows as a known limit but a stricter model would not.
	Notes []Anomaly `json:"notes"`
	// Keys maps each key to porcupine's verdict on it: "Ok", "Illegal" or "Unknown" (timed out).
	Keys map[string]string `json:"keys"`
}

func absent(read *string) string {
	if read == nil {
		return ""
	}
	return *read
}

func describe(value string) string {
	if value == "" {
		return "not-found"
	}
	return value
}
