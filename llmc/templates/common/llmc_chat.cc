// llmc_chat.cc: see llmc_chat.h. The turn logic mirrors llmc/runtime/session.py (ChatSession) and the
// generation loop llmc/runtime/generate.py, so that a greedy chat gives the same text on both.
#include "llmc_chat.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "llmc_json.h"

namespace llmc {

namespace {

Json ReadJsonFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(path + ": cannot open");
  std::stringstream buffer;
  buffer << file.rdbuf();
  try {
    return Json::Parse(buffer.str());
  } catch (const std::exception& err) {
    throw std::runtime_error(path + ": " + err.what());
  }
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Length of the longest suffix of `text` that is a proper prefix of a stop string (held back while streaming).
size_t HeldBack(const std::string& text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops) {
    for (size_t n = std::min(stop.size() - 1, text.size()); n > held; --n) {
      if (text.compare(text.size() - n, n, stop, 0, n) == 0) {
        held = n;
        break;
      }
    }
  }
  return held;
}

}  // namespace

// ---------------------------------------------------------------- chat format
ChatFormat ChatFormat::FromJson(const Json& chat) {
  ChatFormat format;
  if (!chat.IsObject()) return format;
  format.enabled = true;
  format.prefix_no_system = chat.GetString("prefix_no_system");
  format.has_system = chat["prefix_with_system"].IsString();
  format.prefix_with_system = chat.GetString("prefix_with_system");
  format.system_to_user = chat.GetString("system_to_user");
  format.user_to_assistant = chat.GetString("user_to_assistant");
  format.assistant_to_user = chat.GetString("assistant_to_user");
  if (chat["stop_token_ids"].IsArray()) {
    for (const Json& id : chat["stop_token_ids"].Array()) format.stop_token_ids.push_back(static_cast<int32_t>(id.Int()));
  }
  if (chat["stop_strings"].IsArray()) {
    for (const Json& s : chat["stop_strings"].Array()) {
      if (!s.String().empty()) format.stop_strings.push_back(s.String());
    }
  }
  return format;
}

std::string ChatFormat::Render(const std::string& system, const std::vector<Message>& messages) const {
  std::string text = (!system.empty() && has_system) ? prefix_with_system + system + system_to_user : prefix_no_system;
  for (const Message& message : messages) {
    text += message.content;
    text += message.user ? user_to_assistant : assistant_to_user;
  }
  return text;
}

// ---------------------------------------------------------------- sampling
int32_t Sampler::Sample(const std::vector<float>& logits, float temperature, float top_p) {
  if (logits.empty()) throw std::runtime_error("no logits to sample from");
  if (temperature <= 0) return Engine::Argmax(logits);
  double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - top) / temperature);
    total += probs[i];
  }
  for (double& p : probs) p /= total;
  std::vector<int32_t> order(probs.size());
  std::iota(order.begin(), order.end(), 0);
  size_t keep = order.size();
  if (top_p < 1.0f) {
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
    double cumulative = 0;
    for (size_t i = 0; i < order.size(); ++i) {
      cumulative += probs[static_cast<size_t>(order[i])];
      if (cumulative >= top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += probs[static_cast<size_t>(order[i])];
  double pick = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    pick -= probs[static_cast<size_t>(order[i])];
    if (pick < 0) return order[i];
  }
  return order[keep - 1];
}

// ---------------------------------------------------------------- chat
Chat::Chat(const std::string& app_config_file, const std::string& model_id, const std::string& model_dir,
           DLDeviceType device_type, int device_id)
    : tokenizer_(Tokenizer::FromFile(model_dir + "/tokenizer.json")) {
  Json app = ReadJsonFile(app_config_file);
  const Json* entry = nullptr;
  for (const Json& model : app["models"].Array()) {
    if (model.GetString("model_id") == model_id) entry = &model;
  }
  if (entry == nullptr) throw std::runtime_error(app_config_file + ": no model " + model_id);
  Json config = ReadJsonFile(model_dir + "/llmc-config.json");
  ModelSpec spec;
  spec.model_lib = entry->GetString("model_lib");
  spec.model_dir = model_dir;
  for (const Json& name : config["params"].Array()) spec.param_names.push_back(name.String());
  spec.context_window = config.GetInt("context_window", 0);
  spec.prefill_chunk = config.GetInt("prefill_chunk", 0);
  engine_ = std::make_unique<Engine>(spec, device_type, device_id);

  format_ = ChatFormat::FromJson((*entry)["chat"]);
  const Json& info = config["tokenizer"];
  bos_id_ = static_cast<int32_t>(info.GetInt("bos_token_id", -1));
  add_bos_ = info.GetBool("add_bos_token", false);
  if (info["eos_token_ids"].IsArray()) {
    for (const Json& id : info["eos_token_ids"].Array()) eos_ids_.push_back(static_cast<int32_t>(id.Int()));
  }
}

std::vector<int32_t> Chat::EncodePrompt(const std::string& text) const {
  std::vector<int32_t> ids = tokenizer_.Encode(text);
  if (add_bos_ && bos_id_ >= 0 && (ids.empty() || ids[0] != bos_id_)) ids.insert(ids.begin(), bos_id_);
  return ids;
}

bool Chat::IsStopToken(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end() ||
         std::find(format_.stop_token_ids.begin(), format_.stop_token_ids.end(), id) != format_.stop_token_ids.end();
}

void Chat::Reset(const std::string& system_prompt) {
  engine_->Reset();
  fed_.clear();
  messages_.clear();
  system_ = system_prompt;
}

std::string Chat::Send(const std::string& text, const SamplingOptions& options,
                       const std::function<void(const std::string&)>& on_text, ReplyStats* stats,
                       const std::atomic<bool>* cancel) {
  std::vector<int32_t> full;
  messages_.push_back({true, text});
  if (format_.enabled) {
    full = EncodePrompt(format_.Render(system_, messages_));
  } else {
    full = fed_;
    std::vector<int32_t> more = EncodePrompt(text);
    full.insert(full.end(), more.begin(), more.end());
  }
  bool extends = full.size() > fed_.size() && std::equal(fed_.begin(), fed_.end(), full.begin()) &&
                 engine_->Length() == static_cast<int64_t>(fed_.size());
  if (!extends) {  // the re-rendered conversation does not continue the cache: start it again
    engine_->Reset();
    fed_.clear();
  }
  std::vector<int32_t> fresh(full.begin() + static_cast<std::ptrdiff_t>(fed_.size()), full.end());
  const int64_t window = engine_->ContextWindow();
  const int64_t past = static_cast<int64_t>(fed_.size());
  if (fresh.empty() || past + static_cast<int64_t>(fresh.size()) >= window) {
    messages_.pop_back();
    throw std::runtime_error("the conversation is " + std::to_string(full.size()) +
                             " tokens but the context window is " + std::to_string(window) +
                             "; start a new conversation");
  }
  ReplyStats local;
  ReplyStats& s = stats ? *stats : local;
  s = ReplyStats();
  s.prompt_tokens = static_cast<int64_t>(fresh.size());
  sampler_.Seed(options.seed);

  auto started = std::chrono::steady_clock::now();
  std::vector<float> logits = engine_->Prefill(fresh);
  s.prefill_seconds = Seconds(started);
  started = std::chrono::steady_clock::now();

  StreamDecoder decoder(tokenizer_);
  std::vector<int32_t> output;
  std::string reply;  // the answer so far; reply[0, shown) went to on_text
  size_t shown = 0;
  bool stopped_by_string = false;
  auto emit = [&](size_t upto) {
    if (upto > shown) {
      if (on_text) on_text(reply.substr(shown, upto - shown));
      shown = upto;
    }
  };
  while (true) {
    int32_t token = sampler_.Sample(logits, options.temperature, options.top_p);
    output.push_back(token);
    bool eos = std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end();
    if (!eos) reply += decoder.Push(token);
    for (const std::string& stop : format_.stop_strings) {
      size_t at = reply.find(stop);
      if (at != std::string::npos) {
        reply.resize(at);
        stopped_by_string = true;
      }
    }
    if (stopped_by_string || IsStopToken(token)) {
      s.finish_reason = "stop";
      break;
    }
    emit(reply.size() - HeldBack(reply, format_.stop_strings));
    if (static_cast<int>(output.size()) >= options.max_tokens) {
      s.finish_reason = "length";
      break;
    }
    if (past + static_cast<int64_t>(fresh.size() + output.size()) >= window) {
      s.finish_reason = "context_window";
      break;
    }
    if (cancel != nullptr && cancel->load()) {
      s.finish_reason = "cancelled";
      break;
    }
    logits = engine_->Decode(token);
  }
  if (!stopped_by_string) {
    // what the decoder held back: shown unless it ends inside a character (cut off by max_tokens), as llmc chat
    std::string rest = decoder.Finish();
    if (rest.size() < 3 || rest.compare(rest.size() - 3, 3, "\xEF\xBF\xBD") != 0) reply += rest;
  }
  emit(reply.size());
  s.decode_seconds = Seconds(started);
  s.output_tokens = static_cast<int64_t>(output.size());

  // every output token but the last was fed back through decode
  fed_ = full;
  fed_.insert(fed_.end(), output.begin(), output.end() - 1);
  std::string content = reply;  // the conversation keeps the whole answer (a cut-off character included)
  if (!stopped_by_string) {
    std::vector<int32_t> kept;
    for (int32_t id : output) {
      if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) kept.push_back(id);
    }
    content = tokenizer_.Decode(kept);
  }
  messages_.push_back({false, content});
  return reply;
}

}  // namespace llmc
