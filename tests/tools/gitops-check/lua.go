package main

// The Lua side as Argo CD runs a health check or an action from argocd-cm
// (github.com/argoproj/argo-cd util/lua/lua.go at 37ee0097cf851bc2dd7665fc081bbce61a7e836e,
// Apache License 2.0): the same interpreter and version (go.mod), the same libraries, the
// object decoded the same way, the same one-second limit.

import (
	"context"
	"encoding/json"
	"time"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// runLua is Argo CD's runLuaWithResourceActionParameters with UseOpenLibs false: a script
// from argocd-cm gets package, base, table and the safe os library (os.time, os.date; reached
// with `local os = require("os")`), not string, math, io or the full os, unless the
// administrator sets resource.customizations.useOpenLibs.
func runLua(obj *unstructured.Unstructured, script string) (*lua.LState, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, pair := range []struct {
		n string
		f lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, OpenSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(pair.f), NRet: 0, Protect: true}, lua.LString(pair.n)); err != nil {
			l.Close()
			return nil, err
		}
	}
	l.PreloadModule(lua.OsLibName, SafeOsLoader)
	ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", decodeValue(l, obj.Object))
	if err := l.DoString(script); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func decodeValue(l *lua.LState, value any) lua.LValue {
	switch converted := value.(type) {
	case bool:
		return lua.LBool(converted)
	case float64:
		return lua.LNumber(converted)
	case string:
		return lua.LString(converted)
	case json.Number:
		return lua.LString(converted)
	case int:
		return lua.LNumber(converted)
	case int32:
		return lua.LNumber(converted)
	case int64:
		return lua.LNumber(converted)
	case []any:
		arr := l.CreateTable(len(converted), 0)
		for _, item := range converted {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(converted))
		for key, item := range converted {
			tbl.RawSetH(lua.LString(key), decodeValue(l, item))
		}
		return tbl
	case nil:
		return lua.LNil
	}
	return lua.LNil
}

// cleanReturnedObj: Lua cannot tell an empty table from an empty array; an empty object of the
// live object must not come back as an empty array.
func cleanReturnedObj(newObj, obj map[string]any) map[string]any {
	mapToReturn := newObj
	for key := range obj {
		if newValueInterface, ok := newObj[key]; ok {
			oldValueInterface, ok := obj[key]
			if !ok {
				continue
			}
			switch newValue := newValueInterface.(type) {
			case map[string]any:
				if oldValue, ok := oldValueInterface.(map[string]any); ok {
					mapToReturn[key] = cleanReturnedObj(newValue, oldValue)
				}
			case []any:
				switch oldValue := oldValueInterface.(type) {
				case map[string]any:
					if len(newValue) == 0 {
						mapToReturn[key] = map[string]any{}
					}
				case []any:
					mapToReturn[key] = cleanReturnedArray(newValue, oldValue)
				}
			}
		}
	}
	return mapToReturn
}

func cleanReturnedArray(newObj, obj []any) []any {
	arrayToReturn := newObj
	for i := range newObj {
		if i >= len(obj) {
			break
		}
		switch newValue := newObj[i].(type) {
		case map[string]any:
			if oldValue, ok := obj[i].(map[string]any); ok {
				arrayToReturn[i] = cleanReturnedObj(newValue, oldValue)
			}
		case []any:
			if oldValue, ok := obj[i].([]any); ok {
				arrayToReturn[i] = cleanReturnedArray(newValue, oldValue)
			}
		}
	}
	return arrayToReturn
}
