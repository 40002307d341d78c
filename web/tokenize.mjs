// Run the page's tokenizer (llmc/templates/web/tokenizer.js) under node: encode and decode texts with a tokenizer.json.
// usage: node web/tokenize.mjs TOKENIZER_JSON '["text", ...]'  ->  [{"ids": [...], "decoded": "..."}, ...]
import fs from "node:fs";
import vm from "node:vm";

const [tokenizerFile, textsJson] = process.argv.slice(2);
const source = new URL("../llmc/templates/web/tokenizer.js", import.meta.url);
const context = vm.createContext({ TextEncoder, TextDecoder });
vm.runInContext(fs.readFileSync(source, "utf8"), context);
const Tokenizer = vm.runInContext("Tokenizer", context);
const tokenizer = new Tokenizer(JSON.parse(fs.readFileSync(tokenizerFile, "utf8")));
const results = JSON.parse(textsJson).map((text) => {
  const ids = tokenizer.encode(text);
  return { ids, decoded: tokenizer.decode(ids) };
});
process.stdout.write(JSON.stringify(results) + "\n");
