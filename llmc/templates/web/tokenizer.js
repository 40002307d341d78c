// A byte-level BPE tokenizer (GPT-2 / Llama-3 / SmolLM family) read from tokenizer.json, for the llmc page.
// Covers: added (special) tokens, ByteLevel pre-tokenization (GPT-2 regex), Split(Regex) + ByteLevel
// sequences, Digits; BPE merges by rank; ByteLevel decoding. Other tokenizer kinds throw on encode.
"use strict";

const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

function byteToUnicode() {
  // GPT-2's reversible byte -> printable character map
  const bytes = [];
  for (let b = 33; b <= 126; b++) bytes.push(b);
  for (let b = 161; b <= 172; b++) bytes.push(b);
  for (let b = 174; b <= 255; b++) bytes.push(b);
  const chars = bytes.slice();
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!bytes.includes(b)) {
      bytes.push(b);
      chars.push(256 + extra++);
    }
  }
  const map = new Map();
  bytes.forEach((b, i) => map.set(b, String.fromCharCode(chars[i])));
  return map;
}

class Tokenizer {
  static async load(base) {
    return new Tokenizer(await (await fetch(new URL("tokenizer.json", base))).json());
  }

  constructor(spec) {
    this.spec = spec;
    this.vocab = new Map(Object.entries(spec.model.vocab || {}));
    this.added = new Map((spec.added_tokens || []).map((t) => [t.content, t.id]));
    this.specialIds = new Set((spec.added_tokens || []).filter((t) => t.special).map((t) => t.id));
    this.idToToken = new Map();
    for (const [token, id] of this.vocab) this.idToToken.set(id, token);
    for (const [token, id] of this.added) this.idToToken.set(id, token);
    this.ranks = new Map();
    (spec.model.merges || []).forEach((m, i) => this.ranks.set(Array.isArray(m) ? m.join(" ") : m, i));
    this.byteMap = byteToUnicode();
    this.unicodeToByte = new Map([...this.byteMap].map(([b, c]) => [c, b]));
    this.splitters = this.preTokenizers(spec.pre_tokenizer);
    const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const specials = [...this.added.keys()].sort((a, b) => b.length - a.length).map(escape);
    this.specialRe = specials.length ? new RegExp(`(${specials.join("|")})`) : null;
  }

  preTokenizers(pre) {
    if (!pre) return [];
    if (pre.type === "Sequence") return pre.pretokenizers.flatMap((p) => this.preTokenizers(p));
    if (pre.type === "ByteLevel") return pre.use_regex === false ? [] : [(s) => s.match(GPT2_SPLIT) || []];
    if (pre.type === "Digits") return [(s) => s.split(pre.individual_digits ? /(\p{N})/u : /(\p{N}+)/u)];
    if (pre.type === "Split" && pre.pattern.Regex !== undefined) {
      const re = new RegExp(caseInsensitiveGroups(pre.pattern.Regex), "gu");
      return [(s) => splitIsolated(s, re)];
    }
    throw new Error(`tokenizer.js does not handle the ${pre.type} pre-tokenizer; pass token ids instead`);
  }

  encode(text) {
    if (this.spec.model.type !== "BPE" || this.spec.normalizer || this.spec.model.byte_fallback) {
      // SentencePiece-style BPE (Gemma, Llama 2) normalizes text and falls back to bytes: llmc's C++ tokenizer
      // handles it (the phone apps); this page's JS tokenizer does not yet
      throw new Error("tokenizer.js handles byte-level BPE tokenizers only (not SentencePiece-style ones)");
    }
    const ids = [];
    const parts = this.specialRe ? text.split(this.specialRe) : [text];
    for (const part of parts) {
      if (!part) continue;
      if (this.added.has(part)) {
        ids.push(this.added.get(part));
        continue;
      }
      let pieces = [part];
      for (const split of this.splitters) pieces = pieces.flatMap((p) => split(p)).filter((p) => p.length);
      for (const piece of pieces) ids.push(...this.bpe(piece));
    }
    return ids;
  }

  bpe(piece) {
    const bytes = new TextEncoder().encode(piece);
    let word = Array.from(bytes, (b) => this.byteMap.get(b));
    for (;;) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i + 1 < word.length; i++) {
        const rank = this.ranks.get(word[i] + " " + word[i + 1]);
        if (rank !== undefined && rank < bestRank) [best, bestRank] = [i, rank];
      }
      if (best < 0) break;
      word = [...word.slice(0, best), word[best] + word[best + 1], ...word.slice(best + 2)];
    }
    return word.map((t) => {
      if (!this.vocab.has(t)) throw new Error(`token ${t} is not in the vocabulary`);
      return this.vocab.get(t);
    });
  }

  /** Text of `ids`; with `skipSpecial`, special added tokens are left out (as `tokenizers`' skip_special_tokens). */
  decode(ids, skipSpecial = false) {
    const bytes = [];
    for (const id of ids) {
      const token = this.idToToken.get(id);
      if (token === undefined || (skipSpecial && this.specialIds.has(id))) continue;
      if (this.added.has(token)) {
        bytes.push(...new TextEncoder().encode(token));
        continue;
      }
      for (const ch of token) bytes.push(this.unicodeToByte.get(ch) ?? 63);
    }
    return new TextDecoder().decode(Uint8Array.from(bytes));
  }
}

function splitIsolated(text, re) {
  // a Split pre-tokenizer with behavior "isolated": matches become their own pieces
  const out = [];
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(m[0]);
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

function caseInsensitiveGroups(pattern) {
  // Oniguruma's (?i:'s|'t|...) (Llama 3, Qwen2): spell each letter as [xX]; not every JS engine has modifiers
  return pattern.replace(/\(\?i:([^()\\]*)\)/g, (_, body) =>
    "(?:" + body.replace(/[A-Za-z]/g, (c) => `[${c.toLowerCase()}${c.toUpperCase()}]`) + ")"
  );
}

