// Command checker checks a fault-test history (JSON on stdin) against the model of ADR 0002 and
// prints a JSON report on stdout: the anomalies and porcupine's verdict per key. It exits 0 when
// it could check the history, whatever it found; the fault test decides what fails.
//
// The model: see model.go (final state, checked by porcupine) and session.go (per-read checks).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/anishathalye/porcupine"
)

func main() {
	timeout := flag.Duration("timeout", 60*time.Second, "porcupine's time limit per key (a key that hits it is reported Unknown)")
	htmlDir := flag.String("html", "", "folder for porcupine's visualization of each illegal key (none when empty)")
	flag.Parse()

	var h History
	if err := json.NewDecoder(os.Stdin).Decode(&h); err != nil {
		fmt.Fprintf(os.Stderr, "checker: reading the history from stdin: %v\n", err)
		os.Exit(2)
	}
	report := check(h, *timeout, func(key string, info porcupine.LinearizationInfo) {
		if *htmlDir == "" {
			return
		}
		path := filepath.Join(*htmlDir, "final-state-"+filepath.Base(key)+".html")
		if err := porcupine.VisualizePath(registerModel.ToModel(), info, path); err != nil {
			fmt.Fprintf(os.Stderr, "checker: writing %s: %v\n", path, err)
		}
	})
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil {
		fmt.Fprintf(os.Stderr, "checker: writing the report: %v\n", err)
		os.Exit(2)
	}
}

func check(h History, timeout time.Duration, visualize func(string, porcupine.LinearizationInfo)) Report {
	final, notes, verdicts := checkFinalState(h, timeout, visualize)
	anomalies := append(checkSessions(h), final...)
	if anomalies == nil {
		anomalies = []Anomaly{}
	}
	if notes == nil {
		notes = []Anomaly{}
	}
	return Report{Anomalies: anomalies, Notes: notes, Keys: verdicts}
}
