#!/usr/bin/env python3
"""Check every IdvClient in examples/*.yaml (or the files given) against crds/idvclients.yaml.

Offline, no cluster: walks the CRD's openAPIV3Schema (types, required, enum, lengths, item
counts, unknown fields) and evaluates its CEL rules of the shapes the CRD uses (has() of
exactly one, self.matches, self.all(..matches..), trim). A rule of another shape is reported,
so a new rule cannot pass unchecked. Needs PyYAML.  Usage: python3 examples/check.py [FILE...]
"""
import glob, os, re, sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPES = {"string": str, "boolean": bool, "integer": int, "object": dict, "array": list}


def cel_strings(rule):
    # CEL single-quoted literals; the only escapes the CRD uses are doubled backslashes.
    return [s.replace("\\\\", "\\") for s in re.findall(r"'((?:[^'\\]|\\.)*)'", rule)]


def cel(rule, value):
    """True/False for the rule shapes of this CRD; None when the shape is unknown."""
    has = re.findall(r"has\(self\.(\w+)\)", rule)
    if re.fullmatch(r"\[(has\(self\.\w+\),? ?)+\]\.filter\(x, x\)\.size\(\) == 1", rule):
        return sum(k in value for k in has) == 1
    if re.fullmatch(r"has\(self\.\w+\) != has\(self\.\w+\)", rule):
        return (has[0] in value) != (has[1] in value)
    if rule == "self.trim() != ''":
        return value.strip() != ""
    if re.fullmatch(r"self\.matches\('.*'\)( \|\| self\.matches\('.*'\))*", rule):
        return any(re.search(p, value) for p in cel_strings(rule))
    if re.fullmatch(r"self\.all\((\w+), \1\.matches\('.*'\)\)", rule):
        return all(re.search(cel_strings(rule)[0], v) for v in value)
    return None


def check(value, schema, path, errors):
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: null is not allowed")
        return
    kind = schema.get("type")
    if kind and not (isinstance(value, TYPES[kind]) and not (kind == "integer" and isinstance(value, bool))):
        errors.append(f"{path}: expected {kind}, got {type(value).__name__} {value!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1 << 30):
            errors.append(f"{path}: length {len(value)} outside the schema's bounds")
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 1 << 30):
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), f"{path}[{i}]", errors)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}: missing required field {key}")
        for key, item in value.items():
            if key in props:
                check(item, props[key], f"{path}.{key}", errors)
            elif "additionalProperties" in schema:
                check(item, schema["additionalProperties"], f"{path}.{key}", errors)
            else:
                errors.append(f"{path}.{key}: unknown field (the API server would drop it)")
    for validation in schema.get("x-kubernetes-validations", []):
        result = cel(validation["rule"], value)
        if result is None:
            errors.append(f"{path}: cannot evaluate CEL rule {validation['rule']!r}; extend check.py")
        elif not result:
            errors.append(f"{path}: {validation['message']}")


def main(files):
    with open(os.path.join(ROOT, "crds", "idvclients.yaml")) as f:
        crd = yaml.safe_load(f)
    version = crd["spec"]["versions"][0]
    api_version = f"{crd['spec']['group']}/{version['name']}"
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    failed = checked = 0
    for name in files:
        with open(name) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != crd["spec"]["names"]["kind"]:
                    continue
                errors = []
                if doc.get("apiVersion") != api_version:
                    errors.append(f"apiVersion {doc.get('apiVersion')!r}, expected {api_version!r}")
                if "spec" not in doc:
                    errors.append("no spec")
                else:
                    check(doc["spec"], schema, "spec", errors)
                checked += 1
                failed += bool(errors)
                label = f"{os.path.relpath(name)}: IdvClient {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"
                print(f"{'FAIL' if errors else 'ok  '} {label}")
                for error in errors:
                    print(f"       {error}")
    print(f"{checked} IdvClient(s) checked, {failed} failed")
    return 1 if failed or not checked else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "examples", "*.yaml")))))
