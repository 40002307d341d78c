// A SwiftUI chat screen over the packaged model(s): conversation, input, streamed answers, a stop button, tok/s,
// and a model picker when the app holds several. Use it as the app's root view: `LLMCChatView()`.
import SwiftUI

public struct LLMCMessage: Identifiable, Sendable {
    public let id = UUID()
    public let fromUser: Bool
    public var text: String
}

@MainActor
public final class LLMCChatModel: ObservableObject {
    @Published public private(set) var messages: [LLMCMessage] = []
    @Published public private(set) var status = ""
    @Published public private(set) var generating = false
    @Published public private(set) var loading = false
    @Published public var selectedModelId: String = LLMCModels.all.first?.modelId ?? ""

    private var chat: LLMCChat?
    private let worker = DispatchQueue(label: "llmc.chat", qos: .userInitiated)

    public init() {}

    /// Loads the selected model (closing the previous one) and starts a new conversation.
    public func load() {
        guard let model = LLMCModels.model(selectedModelId), chat?.model.modelId != model.modelId else { return }
        loading = true
        status = "Loading \(model.modelId)…"
        messages = []
        worker.async {
            let result = Result { try LLMCChat(model: model) }
            DispatchQueue.main.async {
                self.loading = false
                switch result {
                case let .success(chat):
                    self.chat = chat
                    self.status = "\(model.modelId) ready"
                case let .failure(error):
                    self.chat = nil
                    self.status = "Could not load \(model.modelId): \(error.localizedDescription)"
                }
            }
        }
    }

    public func send(_ text: String) {
        let text = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let chat, !text.isEmpty, !generating else { return }
        messages.append(LLMCMessage(fromUser: true, text: text))
        messages.append(LLMCMessage(fromUser: false, text: ""))
        let index = messages.count - 1
        generating = true
        status = "…"
        worker.async {
            let result = Result {
                try chat.send(text) { piece in
                    DispatchQueue.main.async { self.messages[index].text += piece }
                }
            }
            DispatchQueue.main.async {
                self.generating = false
                switch result {
                case let .success(reply):
                    let stopped = reply.finishReason == "cancelled" ? " · stopped" : ""
                    self.status = String(
                        format: "%.1f tok/s · %d tokens · prefill %d tokens in %.2f s%@",
                        reply.decodeTokensPerSecond, reply.outputTokens, reply.promptTokens, reply.prefillSeconds,
                        stopped
                    )
                case let .failure(error):
                    self.status = "Error: \(error.localizedDescription)"
                }
            }
        }
    }

    public func stop() {
        chat?.stop()
    }

    public func newConversation() {
        guard !generating, let chat else { return }
        messages = []
        worker.async { chat.reset() }
        status = "New conversation"
    }
}

public struct LLMCChatView: View {
    @StateObject private var model = LLMCChatModel()
    @State private var input = ""

    public init() {}

    public var body: some View {
        VStack(spacing: 8) {
            HStack {
                if LLMCModels.all.count > 1 {
                    Picker("Model", selection: $model.selectedModelId) {
                        ForEach(LLMCModels.all, id: \.modelId) { entry in
                            Text("\(entry.modelId) · \(entry.quantization)").tag(entry.modelId)
                        }
                    }
                    .onChange(of: model.selectedModelId) { _ in model.load() }
                }
                Spacer()
                Button("New chat") { model.newConversation() }.disabled(model.generating)
            }
            ScrollViewReader { proxy in
                ScrollView {
                    LazyVStack(alignment: .leading, spacing: 12) {
                        ForEach(model.messages) { message in
                            VStack(alignment: .leading, spacing: 2) {
                                Text(message.fromUser ? "You" : model.selectedModelId).font(.caption).bold()
                                Text(message.text).textSelection(.enabled)
                            }
                            .id(message.id)
                        }
                    }
                }
                .onChange(of: model.messages.last?.text) { _ in
                    if let last = model.messages.last { proxy.scrollTo(last.id, anchor: .bottom) }
                }
            }
            Text(model.status).font(.footnote).foregroundColor(.secondary)
            HStack {
                TextField("Message", text: $input, axis: .vertical)
                    .textFieldStyle(.roundedBorder)
                    .disabled(model.loading)
                if model.generating {
                    Button("Stop") { model.stop() }
                } else {
                    Button("Send") {
                        model.send(input)
                        input = ""
                    }
                    .disabled(model.loading || input.isEmpty)
                }
            }
        }
        .padding()
        .onAppear { model.load() }
    }
}
