// llmc in the browser: load an artifact compiled with `llmc compile MODEL --target webgpu` (llmc-config.json,
// the .wasm model library, the tensor cache, tokenizer.json) through TVM's JS runtime (global `tvmjs`,
// from tvmjs.bundle.js) and generate tokens greedily on WebGPU.
"use strict";

const PAGE_SIZE = 16; // KV-cache page size, as in llmc.runtime.engine

class LlmcModel {
  /**
   * Load the artifact at `base` (a folder URL ending in "/"); `log` receives progress lines, `onProgress(fraction,
   * text)` the weight download. Weights are kept in the browser's Cache API under `cacheScope` (one scope per set
   * of weights), so a second visit reads them from there instead of the network.
   */
  static async load(base, log = console.log, onProgress = () => {}, cacheScope = "llmc") {
    const self = new LlmcModel();
    self.base = base;
    if (!navigator.gpu) {
      throw new Error(
        "this browser has no WebGPU (navigator.gpu is missing): use a recent Chrome or Edge (113+) on a secure " +
          "origin (https:// or http://localhost), or Safari/Firefox with WebGPU enabled"
      );
    }
    self.config = await (await fetch(new URL("llmc-config.json", base))).json();
    if (self.config.target !== "webgpu") {
      throw new Error(`this artifact was compiled for ${self.config.target}; compile it with --target webgpu`);
    }
    const wasm = await (await fetch(new URL(self.config.library, base))).arrayBuffer();
    const tvm = await tvmjs.instantiate(new Uint8Array(wasm), tvmjs.createPolyfillWASI(), log);
    const gpu = await tvmjs.detectGPUDevice();
    if (gpu === undefined) throw new Error("this browser has WebGPU but gave no adapter (no usable GPU or driver)");
    if (self.config.dtype === "float16" && !gpu.device.features.has("shader-f16")) {
      throw new Error(
        `this WebGPU adapter has no shader-f16, and ${self.config.quantization} kernels need it; ` +
          "compile with an fp32 scheme (q4f32_1, q0f32) for this browser"
      );
    }
    log(`WebGPU adapter: ${gpu.adapterInfo.vendor || ""} ${gpu.adapterInfo.architecture || ""}`.trim());
    tvm.initWebGPU(gpu.device);
    self.tvm = tvm;
    self.device = tvm.webgpu();
    tvm.beginScope();
    self.vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(self.device));
    let started = performance.now();
    const seconds = () => ((performance.now() - started) / 1000).toFixed(1);
    tvm.registerInitProgressCallback((report) => onProgress(report.progress, report.text));
    self.cachedBeforeLoad = await tvmjs.hasTensorInCache(base, cacheScope, "cache");
    await tvm.fetchTensorCache(base, self.device, cacheScope, "cache");
    onProgress(1, self.cachedBeforeLoad ? "weights read from the browser cache" : "weights downloaded and cached");
    log(`weights loaded in ${seconds()} s`);
    self.params = tvm.detachFromCurrentScope(tvm.getParamsFromCacheByName(self.config.params));
    const shape = (n) => tvm.makeShapeTuple([n]);
    self.kv = tvm.detachFromCurrentScope(
      self.vm.getFunction("create_paged_kv_cache")(
        shape(1), shape(self.config.context_window), shape(self.config.prefill_chunk), shape(PAGE_SIZE), shape(0)
      )
    );
    for (const name of ["embed", "prefill", "decode"]) {
      self[name] = tvm.detachFromCurrentScope(self.vm.getFunction(name));
    }
    const builtin = (name) => tvm.detachFromCurrentScope(tvm.getGlobalFunc(name));
    self.kvAdd = builtin("vm.builtin.kv_state_add_sequence");
    self.kvBegin = builtin("vm.builtin.kv_state_begin_forward");
    self.kvEnd = builtin("vm.builtin.kv_state_end_forward");
    self.kvClear = builtin("vm.builtin.kv_state_clear");
    self.reshape = builtin("vm.builtin.reshape");
    tvm.endScope();
    started = performance.now();
    await tvm.asyncLoadWebGPUPipelines(self.vm.getInternalModule());
    log(`kernels compiled in ${seconds()} s`);
    log(`loaded ${self.config.model.model_type} (${self.config.quantization}) on WebGPU`);
    return self;
  }

  /** Run `fn(ids)` (embed + prefill/decode) on `tokens` of sequence 0; return the logits as a Float32Array. */
  async forward(fn, tokens) {
    const tvm = this.tvm;
    tvm.beginScope();
    const ids = tvm.empty([tokens.length], "int32", this.device).copyFrom(Int32Array.from(tokens));
    const embeds = this.reshape(
      this.embed(ids, this.params),
      tvm.makeShapeTuple([1, tokens.length, this.config.model.hidden_size])
    );
    this.kvBegin(this.kv, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([tokens.length]));
    const logits = fn(embeds, this.kv, this.params).get(0);
    this.kvEnd(this.kv);
    const host = tvm.empty(logits.shape, "float32", tvm.cpu()).copyFrom(logits);
    await this.device.sync();
    const values = Float32Array.from(host.toArray());
    tvm.endScope();
    return values;
  }

  /** Forget the sequence in the KV cache (the cache keeps its memory). */
  resetSequence() {
    if (this.length !== undefined) this.kvClear(this.kv);
    this.kvAdd(this.kv, new tvmjs.Scalar(0, "int64"));
    this.length = 0;
  }

  /** Append `ids` to the sequence (in prefill_chunk pieces); the logits of the last one. */
  async prefillTokens(ids) {
    if (ids.length === 0) throw new Error("nothing to prefill");
    let logits;
    for (let start = 0; start < ids.length; start += this.config.prefill_chunk) {
      const chunk = ids.slice(start, start + this.config.prefill_chunk);
      logits = await this.forward(this.prefill, chunk);
      this.length += chunk.length;
    }
    return logits;
  }

  /** Append one token; its logits. */
  async decodeToken(id) {
    const logits = await this.forward(this.decode, [id]);
    this.length += 1;
    return logits;
  }

  /** Greedy generation: `maxTokens` new token ids after the prompt ids (stops at EOS when `stopAtEos`). */
  async generate(promptIds, maxTokens, stopAtEos = true, onToken = () => {}) {
    if (promptIds.length === 0) throw new Error("empty prompt");
    if (promptIds.length + maxTokens > this.config.context_window) {
      throw new Error(`prompt + new tokens exceed the context window (${this.config.context_window})`);
    }
    this.resetSequence();
    let logits = await this.prefillTokens(promptIds);
    const eos = new Set((this.config.tokenizer || {}).eos_token_ids || []);
    const out = [];
    for (;;) {
      const next = argmax(logits);
      out.push(next);
      onToken(next);
      if (out.length >= maxTokens || (stopAtEos && eos.has(next))) return out;
      logits = await this.decodeToken(next);
    }
  }
}

/**
 * A conversation (the same turn logic as llmc's runtime and the apps' C++ engine): the chat template was rendered
 * by `llmc package` into fixed strings (llmc-web.json); each turn re-renders the conversation, encodes it, and
 * prefills only the tokens the KV cache does not hold yet.
 */
class LlmcChat {
  constructor(model, tokenizer, web) {
    this.model = model;
    this.tokenizer = tokenizer;
    this.format = web.chat || null;
    const info = model.config.tokenizer || {};
    this.eos = new Set(info.eos_token_ids || []);
    this.stopIds = new Set([...this.eos, ...((this.format && this.format.stop_token_ids) || [])]);
    this.stopStrings = ((this.format && this.format.stop_strings) || []).filter((s) => s.length);
    this.bos = info.add_bos_token && info.bos_token_id !== null && info.bos_token_id !== undefined ? info.bos_token_id : null;
    this.reset();
  }

  /** A new conversation (`system` is used when the template has a system role). */
  reset(system = "") {
    this.system = system;
    this.messages = [];
    this.fed = [];
    this.cancelled = false;
    this.model.resetSequence();
  }

  /** Stop the running answer after its current token. */
  stop() {
    this.cancelled = true;
  }

  render() {
    const f = this.format;
    let text =
      this.system && f.prefix_with_system !== null ? f.prefix_with_system + this.system + f.system_to_user : f.prefix_no_system;
    for (const m of this.messages) text += m.content + (m.role === "user" ? f.user_to_assistant : f.assistant_to_user);
    return text;
  }

  encodePrompt(text) {
    const ids = this.tokenizer.encode(text);
    if (this.bos !== null && ids[0] !== this.bos) ids.unshift(this.bos);
    return ids;
  }

  /**
   * Answer `text`; `onText(piece)` receives the answer as it is generated (whole characters). Options: temperature
   * (0: greedy), topP, seed, maxTokens. Returns the output ids, the text and the timings.
   */
  async send(text, options = {}, onText = () => {}) {
    const { temperature = 0.7, topP = 0.95, seed = Date.now(), maxTokens = 256 } = options;
    this.messages.push({ role: "user", content: text });
    const full = this.format ? this.encodePrompt(this.render()) : [...this.fed, ...this.encodePrompt(text)];
    const extends_ = full.length > this.fed.length && this.fed.every((id, i) => full[i] === id) && this.model.length === this.fed.length;
    if (!extends_) {
      this.model.resetSequence();
      this.fed = [];
    }
    const fresh = full.slice(this.fed.length);
    const window = this.model.config.context_window;
    if (this.fed.length + fresh.length >= window) {
      this.messages.pop();
      throw new Error(`the conversation is ${full.length} tokens but the context window is ${window}; start a new chat`);
    }
    this.cancelled = false;
    const random = mulberry32(seed);
    let started = performance.now();
    let logits = await this.model.prefillTokens(fresh);
    const prefillSeconds = (performance.now() - started) / 1000;
    started = performance.now();
    const output = [];
    let reply = "";
    let shown = 0;
    let finishReason = "length";
    let stoppedByString = false;
    for (;;) {
      const token = sample(logits, temperature, topP, random);
      output.push(token);
      const decoded = this.tokenizer.decode(output.filter((id) => !this.eos.has(id)), true);
      if (!decoded.endsWith("\ufffd")) reply = decoded;
      for (const stop of this.stopStrings) {
        const at = reply.indexOf(stop);
        if (at >= 0) {
          reply = reply.slice(0, at);
          stoppedByString = true;
        }
      }
      if (stoppedByString || this.stopIds.has(token)) {
        finishReason = "stop";
        break;
      }
      const held = heldBack(reply, this.stopStrings);
      if (reply.length - held > shown) {
        onText(reply.slice(shown, reply.length - held));
        shown = reply.length - held;
      }
      if (output.length >= maxTokens) break;
      if (this.fed.length + fresh.length + output.length >= window) {
        finishReason = "context_window";
        break;
      }
      if (this.cancelled) {
        finishReason = "cancelled";
        break;
      }
      logits = await this.model.decodeToken(token);
    }
    // the stream never shows a character cut off by maxTokens (as llmc chat); the conversation keeps it
    if (reply.length > shown) onText(reply.slice(shown));
    const content = stoppedByString ? reply : this.tokenizer.decode(output.filter((id) => !this.eos.has(id)), true);
    const decodeSeconds = (performance.now() - started) / 1000;
    this.fed = [...full, ...output.slice(0, -1)]; // every output token but the last was fed back
    this.messages.push({ role: "assistant", content });
    return {
      ids: output,
      text: reply,
      promptTokens: fresh.length,
      outputTokens: output.length,
      prefillSeconds,
      decodeSeconds,
      decodeTokPerS: decodeSeconds > 0 ? Math.max(output.length - 1, 0) / decodeSeconds : 0,
      finishReason,
    };
  }
}

/** Greedy at temperature 0, else temperature + nucleus (top-p) sampling with `random()` in [0, 1). */
function sample(logits, temperature, topP, random) {
  if (temperature <= 0) return argmax(logits);
  let top = -Infinity;
  for (const v of logits) top = Math.max(top, v);
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += probs[i] = Math.exp((logits[i] - top) / temperature);
  const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a]);
  let keep = order.length;
  let cumulative = 0;
  for (let i = 0; i < order.length && topP < 1; i++) {
    cumulative += probs[order[i]] / total;
    if (cumulative >= topP) {
      keep = i + 1;
      break;
    }
  }
  let mass = 0;
  for (let i = 0; i < keep; i++) mass += probs[order[i]];
  let pick = random() * mass;
  for (let i = 0; i < keep; i++) {
    pick -= probs[order[i]];
    if (pick < 0) return order[i];
  }
  return order[keep - 1];
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Length of the longest end of `text` that begins a stop string: held back while streaming. */
function heldBack(text, stops) {
  let held = 0;
  for (const stop of stops) {
    for (let n = Math.min(stop.length - 1, text.length); n > held; n--) {
      if (text.endsWith(stop.slice(0, n))) {
        held = n;
        break;
      }
    }
  }
  return held;
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}
