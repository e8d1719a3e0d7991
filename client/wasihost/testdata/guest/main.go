//go:build wasip1

// Command guest is a Kubewarden WASI policy written against the raw
// host-call ABI (not the SDK, which would need a network module), for
// package wasihost's tests. What it does is driven by its input:
//
//	{"calls":[{"binding":…,"namespace":…,"operation":…,"payload":…}],
//	 "loop":true, "raw":"text", "exit":3, "grow":1000000000, "probe":true}
//
// It reads its input from stdin to EOF, makes each call in turn, reading
// the answer (or error text) from stdin to EOF after each, and writes
// {"accepted":true,"message":"<argv[1]>","calls":[{"status":0|1,"answer":"…"}]}
// unless told to loop forever, write raw text, grow its memory or exit.
package main

import (
	"encoding/json"
	"io"
	"os"
	"runtime"
	"unsafe"
)

//go:wasmimport host call
//go:noescape
func hostCall(bindingPtr, bindingLen, namespacePtr, namespaceLen, operationPtr, operationLen, payloadPtr, payloadLen uint32) uint32

func ptr(s string) uint32 {
	if s == "" {
		return 0
	}
	return uint32(uintptr(unsafe.Pointer(unsafe.StringData(s))))
}

type call struct {
	Binding   string `json:"binding"`
	Namespace string `json:"namespace"`
	Operation string `json:"operation"`
	Payload   string `json:"payload"`
}

type result struct {
	Status uint32 `json:"status"`
	Answer string `json:"answer"`
}

var sink [][]byte

func main() {
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	var req struct {
		Calls []call `json:"calls"`
		Loop  bool   `json:"loop"`
		Raw   string `json:"raw"`
		Exit  int    `json:"exit"`
		Grow  int    `json:"grow"`
		Probe bool   `json:"probe"`
	}
	if err := json.Unmarshal(in, &req); err != nil {
		panic(err)
	}
	var results []result
	for _, c := range req.Calls {
		status := hostCall(ptr(c.Binding), uint32(len(c.Binding)),
			ptr(c.Namespace), uint32(len(c.Namespace)),
			ptr(c.Operation), uint32(len(c.Operation)),
			ptr(c.Payload), uint32(len(c.Payload)))
		runtime.KeepAlive(c)
		answer, err := io.ReadAll(os.Stdin)
		if err != nil {
			panic(err)
		}
		results = append(results, result{Status: status, Answer: string(answer)})
	}
	switch {
	case req.Loop:
		for n := 0; ; n++ {
			if n < 0 {
				break
			}
		}
	case req.Raw != "":
		os.Stdout.WriteString(req.Raw)
		return
	case req.Exit != 0:
		os.Exit(req.Exit)
	case req.Grow > 0:
		sink = append(sink, make([]byte, req.Grow))
	case req.Probe:
		// What the guest can reach: no environment, no files.
		_, ferr := os.ReadDir("/")
		_, cerr := os.Getwd()
		out, _ := json.Marshal(map[string]any{"accepted": true, "env": os.Environ(), "readdir": ferr != nil, "args": os.Args, "getwd": cerr == nil})
		os.Stdout.Write(out)
		return
	}
	out, _ := json.Marshal(map[string]any{"accepted": true, "message": os.Args[1], "calls": results})
	os.Stdout.Write(out)
}
