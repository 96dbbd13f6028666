#!/usr/bin/env bash
# Builds the chat page (docs/web.md) into $CARGO_TARGET_DIR/web (default
# ~/.cache/greet/target/web): index.html and app.js, the bundle (esbuild) of
# src/*.ts, type-checked by tsc, and of the TypeScript that protoc-gen-es
# generates from protos/chat.proto at every build (through buf; all pinned
# in package-lock.json; nothing generated is committed). Installs the npm packages with `npm ci` when
# node_modules is missing or older than the lock file. Prints the output
# directory. Envoy serves it with `render.py --web-root DIR`.
set -euo pipefail
web=$(cd "$(dirname "$0")" && pwd)
out=${CARGO_TARGET_DIR:-$HOME/.cache/greet/target}/web
cd "$web"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
    touch node_modules
fi
rm -rf "$out/modules" && mkdir -p "$out/modules"
# The generated module lives under the output; `import ... from "gen/..."`
# finds it through NODE_PATH (esbuild) or paths (tsc), and its own imports
# find web/node_modules through a link beside it.
./node_modules/.bin/buf generate ../protos --path ../protos/chat.proto --template buf.gen.yaml -o "$out/modules" >&2
ln -sfn "$web/node_modules" "$out/modules/node_modules"
# Type-checked (strict) before bundling: esbuild only strips the types.
cat >"$out/tsconfig.json" <<JSON
{
  "compilerOptions": {
    "target": "es2022", "module": "es2022", "moduleResolution": "bundler", "strict": true, "noEmit": true,
    "lib": ["es2022", "dom", "dom.iterable"], "skipLibCheck": true,
    "baseUrl": "$out/modules", "paths": { "gen/*": ["gen/*"] }
  },
  "files": ["$web/src/main.ts"]
}
JSON
./node_modules/.bin/tsc -p "$out/tsconfig.json" >&2
NODE_PATH="$out/modules:$web/node_modules" ./node_modules/.bin/esbuild src/main.ts \
    --bundle --format=esm --target=es2022 --minify --log-level=warning \
    --outfile="$out/app.js" >&2
cp index.html "$out/index.html"
echo "$out"
