// gitops-check runs, on IdvClient objects the operator produced, the code that GitOps tools
// judge them with: cli-utils' kstatus (Flux, kubectl wait) and Argo CD's Lua health checks and
// resource actions, in the interpreter Argo CD uses (gopher-lua) with the libraries Argo CD
// opens for a resource.customizations script. See tests/tools/gitops-check/README.md.
//
// Usage (the object as JSON on stdin, the answer as JSON on stdout):
//
//	gitops-check kstatus                 {"status":"Current|InProgress|Failed|...","message":...}
//	gitops-check health    health.lua    {"status":"Healthy|Progressing|Degraded|...","message":...}
//	gitops-check discovery discovery.lua {"refresh":{"disabled":false},...}
//	gitops-check action    action.lua    {"operation":"patch","object":{...},"mergePatch":{...}}
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	jsonpatch "github.com/evanphx/json-patch"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "gitops-check:", err)
		os.Exit(1)
	}
}

func run(args []string, in io.Reader, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: gitops-check kstatus | health FILE | discovery FILE | action FILE (object as JSON on stdin) | selftest")
	}
	if args[0] == "selftest" && len(args) == 1 {
		// For the build script: the fresh binary runs kstatus on a settled object.
		obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap"}}
		res, err := status.Compute(obj)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(out, res.Status)
		return err
	}
	raw, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(raw); err != nil {
		return fmt.Errorf("stdin is not a Kubernetes object: %w", err)
	}
	var answer any
	switch cmd := args[0]; {
	case cmd == "kstatus" && len(args) == 1:
		res, err := status.Compute(obj)
		if err != nil {
			return err
		}
		answer = map[string]string{"status": res.Status.String(), "message": res.Message}
	case (cmd == "health" || cmd == "discovery" || cmd == "action") && len(args) == 2:
		script, err := os.ReadFile(args[1])
		if err != nil {
			return err
		}
		answer, err = runScript(cmd, obj, string(script))
		if err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown command %q", args)
	}
	return json.NewEncoder(out).Encode(answer)
}

func runScript(cmd string, obj *unstructured.Unstructured, script string) (any, error) {
	l, err := runLua(obj, script)
	if err != nil {
		return nil, err
	}
	defer l.Close()
	ret := l.Get(-1)
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	encoded, err := luajson.Encode(ret)
	if err != nil {
		return nil, err
	}
	switch cmd {
	case "health":
		var hs struct {
			Status  string `json:"status"`
			Message string `json:"message,omitempty"`
		}
		if err := json.Unmarshal(encoded, &hs); err != nil {
			return nil, err
		}
		switch hs.Status {
		case "Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown":
			return hs, nil
		}
		// What Argo CD shows for any other status.
		return map[string]string{"status": "Unknown", "message": "Lua returned an invalid health status"}, nil
	case "discovery":
		var actions map[string]any
		if string(encoded) == "[]" {
			return map[string]any{}, nil
		}
		if err := json.Unmarshal(encoded, &actions); err != nil {
			return nil, err
		}
		return actions, nil
	default:
		// An old-style action returns the object; Argo CD patches with the merge patch from
		// the live object to it (server/application/application.go patchResource).
		var newObj map[string]any
		if err := json.Unmarshal(encoded, &newObj); err != nil {
			return nil, fmt.Errorf("the action did not return an object: %w", err)
		}
		newObj = cleanReturnedObj(newObj, obj.Object)
		live, err := json.Marshal(obj.Object)
		if err != nil {
			return nil, err
		}
		changed, err := json.Marshal(newObj)
		if err != nil {
			return nil, err
		}
		patch, err := jsonpatch.CreateMergePatch(live, changed)
		if err != nil {
			return nil, err
		}
		return map[string]any{"operation": "patch", "object": newObj, "mergePatch": json.RawMessage(patch)}, nil
	}
}
