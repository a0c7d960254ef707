#!/usr/bin/env bash
# Writes argocd-cm.yaml from the Lua files next to it (tests/deploy.rs checks they agree).
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")"
dir=idv-token-operator.dev/IdvClient
indent() { sed -e "s/^\(.\)/$(printf '%*s' "$1" '')\1/" "$2"; }
{
    cat <<'HEAD'
# Argo CD: health and the `refresh` action of IdvClients. Merge these keys into the argocd-cm
# ConfigMap of your Argo CD (kubectl -n argocd patch configmap argocd-cm --patch-file
# deploy/argocd/argocd-cm.yaml, or your Argo CD Helm chart's `configs.cm` values). Generated
# from the files under idv-token-operator.dev/IdvClient/ by render-argocd-cm.sh. docs/gitops.md.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
  resource.customizations.health.idv-token-operator.dev_IdvClient: |
HEAD
    indent 4 "$dir/health.lua"
    echo '  resource.customizations.actions.idv-token-operator.dev_IdvClient: |'
    echo '    discovery.lua: |'
    indent 6 "$dir/actions/discovery.lua"
    echo '    definitions:'
    echo '      - name: refresh'
    echo '        action.lua: |'
    indent 10 "$dir/actions/refresh/action.lua"
} > argocd-cm.yaml
