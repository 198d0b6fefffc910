#!/usr/bin/env bash
# Envoy's instructions per request (callgrind) behind ext_authz, for each answer the do-nothing
# server can give: the deterministic view of what applying authz's answer costs Envoy, which
# CPU time on this shared machine only shows with ±10% noise.
#   benches/scripts/envoy-instructions.sh [REQUESTS]      (after `cargo build --release -p qiria-benches`)
# Prints one line per answer: plain OK, like authz's allow, its headers only, its metadata only,
# then authz itself (shipped policy, one cached RS256 token).
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-2000}
target=${CARGO_TARGET_DIR:-$PWD/target}/release
envoy=$(.venv/bin/python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
work=$(mktemp -d /tmp/qiria-envoy-instr.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listen=$(port); admin=$(port); backend=$(port)
python3 - "$work/envoy.yaml" "$listen" "$admin" "$backend" <<'PY'
import sys
out, listen, admin, backend = sys.argv[1:]
config = open("benches/envoy/bench.template.yaml").read()
filters = open("benches/envoy/ext_authz.filters.yaml").read().rstrip()
for k, v in {"HTTP_FILTERS": filters, "LISTEN_PORT": listen, "ADMIN_PORT": admin, "AUTHZ_PORT": backend}.items():
    config = config.replace("{{%s}}" % k, v)
open(out, "w").write(config)
PY
"$target/authz" keys generate --dir "$work/keys" --kid bench-1 >/dev/null
token=$("$target/authz" token mint --key "$work/keys/private/bench-1.pem" --sub alice --roles User --ttl 3600)
for answer in "" --answer-like-authz --answer-like-authz=headers --answer-like-authz=metadata authz; do
  if [ "$answer" = authz ]; then
    QIRIA_AUTHZ_LOG__DECISIONS=false "$target/authz" serve --grpc-addr "127.0.0.1:$backend" \
      --admin-addr "127.0.0.1:$(port)" --policy-dir policies/rego --keys-dir "$work/keys/public" \
      >"$work/authz.log" 2>&1 & noop=$!
    sleep 1
  else
    "$target/noop-authz" "$backend" $answer & noop=$!
  fi
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$envoy" -c "$work/envoy.yaml" \
    --concurrency 1 --disable-hot-restart --log-level error >"$work/envoy.log" 2>&1 & envoy_pid=$!
  for _ in $(seq 1 600); do curl -fs -o /dev/null "http://127.0.0.1:$admin/ready" && break; sleep 0.2; done
  load=(h2load -c 4 -m 16 -H "authorization: Bearer $token")
  "${load[@]}" -n 400 "http://127.0.0.1:$listen/v1/jobs/42" >/dev/null  # warm-up, not counted
  callgrind_control -z "$envoy_pid" >/dev/null 2>&1
  ok=$("${load[@]}" -n "$n" "http://127.0.0.1:$listen/v1/jobs/42" | sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p')
  callgrind_control -d "$envoy_pid" >/dev/null 2>&1
  sleep 1
  total=$(grep -h '^summary:' "$work"/cg.out.* | tail -1 | awk '{print $2}')
  [ "$ok" = "$n" ] || { echo "only $ok of $n requests allowed with answer '${answer:-plain}'" >&2; exit 1; }
  printf '%-28s %8d instructions per request\n' "${answer:-plain OK}" $((total / n))
  kill "$envoy_pid" "$noop"; wait "$envoy_pid" "$noop" 2>/dev/null || true
  rm -f "$work"/cg.out*
done
