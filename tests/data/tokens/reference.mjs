// Reference token counts for the texts in this folder, from js-tiktoken (an
// independent JavaScript port of OpenAI's tiktoken, with the encodings'
// ranks bundled; no network needed). tests/tokens.rs checks spendb's counts
// (tiktoken-rs) against reference.json. Regenerate with:
//
//   npm install js-tiktoken@1.0.21   # in any scratch folder, then:
//   TOKENS_DIR=tests/data/tokens node reference.mjs > tests/data/tokens/reference.json
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { getEncoding } from "js-tiktoken";

const here = process.env.TOKENS_DIR ?? dirname(fileURLToPath(import.meta.url));
const out = {};
for (const enc of ["o200k_base", "cl100k_base"]) {
  const e = getEncoding(enc);
  out[enc] = {};
  for (const f of readdirSync(here).filter((f) => f.endsWith(".txt")).sort()) {
    out[enc][f] = e.encode(readFileSync(join(here, f), "utf8")).length;
  }
}
console.log(JSON.stringify(out, null, 2));
