// The seed's public entry points (SmallMind.Public) over the C API.
using System;
using System.Collections.Generic;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Threading;
using SmallMind.Abstractions;
using SmallMind.Internal;

namespace SmallMind.Public
{
    /// <summary>The C API's status codes (smallmind_status).</summary>
    public enum SmallMindStatus : uint
    {
        Ok = 0,
        InvalidArgument = 1,
        InvalidJson = 2,
        ModelLoad = 3,
        UnsupportedModel = 4,
        ContextOverflow = 5,
        Cancelled = 6,
        Busy = 7,
        BudgetExceeded = 8,
        Io = 9,
        Internal = 10,
    }

    /// <summary>A failed smallmind call: Status is the C status, Message the library's message.</summary>
    public class SmallMindException : Exception
    {
        public SmallMindStatus Status { get; private set; }
        public SmallMindException(SmallMindStatus status, string message) : base(message) { Status = status; }

        internal static void Check(uint status)
        {
            if (status != 0)
            {
                // smallmind_last_error is this thread's: read it before anything else calls in.
                string message = Native.ReadUtf8(Native.smallmind_last_error()) ?? ("smallmind status " + status);
                throw new SmallMindException((SmallMindStatus)status, message);
            }
        }
    }

    public sealed class SmallMindOptions
    {
        public string ModelPath { get; set; }
        /// <summary>Worker threads (null: the library's default).</summary>
        public int? Threads { get; set; }
        /// <summary>Context length in tokens (null: the model's, capped by the library).</summary>
        public int? ContextLength { get; set; }
        /// <summary>The default for chats whose options do not turn it off.</summary>
        public bool EnableKvCache { get; set; } = true;
    }

    public sealed class ChatClientOptions
    {
        public string SessionId { get; set; }
        public string SystemPrompt { get; set; }
        public bool EnableKvCache { get; set; } = true;
        public int? MaxKvCacheTokens { get; set; }
        public IContextPolicy DefaultContextPolicy { get; set; }
        public IChatTelemetry DefaultTelemetry { get; set; }
    }

    public sealed class SessionInfo
    {
        public string SessionId { get; set; }
        /// <summary>Messages in the history, plus system messages added and not yet sent.</summary>
        public int MessageCount { get; set; }
    }

    public interface ISmallMindEngine : IDisposable
    {
        IChatClient CreateChatClient(ChatClientOptions options);
        /// <summary>Restores a chat from IChatClient.ExportSession's JSON.</summary>
        IChatClient ImportChatClient(string sessionJson, ChatClientOptions options = null);
        /// <summary>Model facts as the library's JSON (architecture, sizes, template, ...).</summary>
        string GetModelInfoJson();
    }

    public interface IChatClient : IDisposable
    {
        ChatResponse SendChat(ChatRequest request, CancellationToken cancellationToken = default(CancellationToken));
        /// <summary>As SendChat, calling onToken with each piece of the reply as it is generated.</summary>
        ChatResponse SendChat(ChatRequest request, Action<string> onToken, CancellationToken cancellationToken = default(CancellationToken));
        /// <summary>Adds a system message; it joins the history with the next request.</summary>
        void AddSystemMessage(string content);
        SessionInfo GetSessionInfo();
        /// <summary>The history as the library's JSON ({"session_id", "messages"}).</summary>
        string GetHistoryJson();
        /// <summary>The session as a versioned JSON envelope (ISmallMindEngine.ImportChatClient).</summary>
        string ExportSession();
        void Reset();
    }

    public static class SmallMindFactory
    {
        public static ISmallMindEngine Create(SmallMindOptions options)
        {
            if (options == null) throw new ArgumentNullException("options");
            if (string.IsNullOrEmpty(options.ModelPath)) throw new ArgumentException("SmallMindOptions.ModelPath is required", "options");
            var json = new Dictionary<string, object> { { "model_path", options.ModelPath } };
            if (options.Threads.HasValue) json["threads"] = options.Threads.Value;
            if (options.ContextLength.HasValue) json["context_length"] = options.ContextLength.Value;
            EngineHandle handle;
            SmallMindException.Check(Native.smallmind_engine_create(Native.Utf8(Json.Write(json)), IntPtr.Zero, out handle));
            Diagnostics.Created();
            return new Engine(handle, options);
        }

        /// <summary>Native handles (engines and chats) created and not yet freed, by Dispose or
        /// by a finalizer. For leak checks.</summary>
        public static long LiveNativeHandles { get { return Diagnostics.Live; } }

        /// <summary>The library's version, e.g. "0.1.0".</summary>
        public static string LibraryVersion { get { return Native.ReadUtf8(Native.smallmind_version()); } }
    }

    internal sealed class Engine : ISmallMindEngine
    {
        private readonly EngineHandle handle;
        private readonly SmallMindOptions options;
        private int contextLength;

        public Engine(EngineHandle handle, SmallMindOptions options)
        {
            this.handle = handle;
            this.options = options;
        }

        public string GetModelInfoJson()
        {
            IntPtr json;
            SmallMindException.Check(Native.smallmind_engine_info(handle, out json));
            return Native.Take(json);
        }

        internal int ContextLength
        {
            get
            {
                if (contextLength == 0) contextLength = (int)Json.Num(Json.Parse(GetModelInfoJson()), "context_length");
                return contextLength;
            }
        }

        public IChatClient CreateChatClient(ChatClientOptions chatOptions)
        {
            chatOptions = chatOptions ?? new ChatClientOptions();
            var json = new Dictionary<string, object>();
            if (chatOptions.SessionId != null) json["session_id"] = chatOptions.SessionId;
            if (chatOptions.SystemPrompt != null) json["system_prompt"] = chatOptions.SystemPrompt;
            json["kv_cache"] = chatOptions.EnableKvCache && options.EnableKvCache;
            if (chatOptions.MaxKvCacheTokens.HasValue) json["max_kv_tokens"] = chatOptions.MaxKvCacheTokens.Value;
            if (chatOptions.DefaultContextPolicy != null) json["context_policy"] = ChatClient.PolicyJson(chatOptions.DefaultContextPolicy, this);
            ChatHandle chat;
            SmallMindException.Check(Native.smallmind_chat_create(handle, Native.Utf8(Json.Write(json)), out chat));
            Diagnostics.Created();
            return new ChatClient(this, chat, chatOptions);
        }

        public IChatClient ImportChatClient(string sessionJson, ChatClientOptions chatOptions = null)
        {
            if (sessionJson == null) throw new ArgumentNullException("sessionJson");
            ChatHandle chat;
            SmallMindException.Check(Native.smallmind_chat_import(handle, Native.Utf8(sessionJson), out chat));
            Diagnostics.Created();
            return new ChatClient(this, chat, chatOptions ?? new ChatClientOptions());
        }

        public void Dispose() { handle.Dispose(); }
    }

    internal sealed class ChatClient : IChatClient
    {
        private readonly Engine engine;
        private readonly ChatHandle handle;
        private readonly ChatClientOptions options;
        private readonly List<string> pendingSystem = new List<string>();

        public ChatClient(Engine engine, ChatHandle handle, ChatClientOptions options)
        {
            this.engine = engine;
            this.handle = handle;
            this.options = options;
        }

        internal static Dictionary<string, object> PolicyJson(IContextPolicy policy, Engine engine)
        {
            var json = new Dictionary<string, object> { { "type", policy.Name } };
            var lastN = policy as KeepLastNTurnsPolicy;
            if (lastN != null) json["max_turns"] = lastN.MaxTurns;
            var window = policy as SlidingWindowPolicy;
            if (window != null) json["max_tokens"] = window.MaxTokens > 0 ? window.MaxTokens : engine.ContextLength;
            if (lastN == null && window == null && !(policy is KeepAllPolicy))
                throw new ArgumentException("smallmind applies keep_all, keep_last_n_turns and sliding_window; "
                    + policy.GetType().Name + " is none of them");
            return json;
        }

        private static string RoleName(ChatRole role)
        {
            switch (role)
            {
                case ChatRole.System: return "system";
                case ChatRole.User: return "user";
                case ChatRole.Assistant: return "assistant";
                case ChatRole.Tool: return "tool";
                default: throw new ArgumentException("unknown role " + role);
            }
        }

        private static Dictionary<string, object> MessageJson(ChatMessageV3 m)
        {
            var json = new Dictionary<string, object> { { "role", RoleName(m.Role) }, { "content", m.Content ?? "" } };
            if (m.ToolCalls != null && m.ToolCalls.Count > 0)
            {
                var calls = new List<object>();
                foreach (var c in m.ToolCalls)
                    calls.Add(new Dictionary<string, object> {
                        { "id", c.Id }, { "type", "function" },
                        { "function", new Dictionary<string, object> { { "name", c.Name }, { "arguments", c.ArgumentsJson ?? "{}" } } } });
                json["tool_calls"] = calls;
            }
            if (m.ToolCallId != null) json["tool_call_id"] = m.ToolCallId;
            return json;
        }

        internal string RequestJson(ChatRequest request, IList<string> systemMessages)
        {
            var json = new Dictionary<string, object>();
            var messages = new List<object>();
            foreach (var s in systemMessages) messages.Add(new Dictionary<string, object> { { "role", "system" }, { "content", s } });
            if (request.Messages != null) foreach (var m in request.Messages) messages.Add(MessageJson(m));
            json["messages"] = messages;
            var o = request.Options;
            if (o != null)
            {
                if (o.MaxNewTokens.HasValue) json["max_tokens"] = o.MaxNewTokens.Value;
                if (o.Temperature.HasValue) json["temperature"] = o.Temperature.Value;
                if (o.TopK.HasValue) json["top_k"] = o.TopK.Value;
                if (o.TopP.HasValue) json["top_p"] = o.TopP.Value;
                if (o.Seed.HasValue) json["seed"] = o.Seed.Value;
                if (o.Stop != null) json["stop"] = o.Stop;
            }
            if (request.ContextPolicy != null) json["context_policy"] = PolicyJson(request.ContextPolicy, engine);
            if (request.Tools != null)
            {
                var tools = new List<object>();
                foreach (var t in request.Tools)
                {
                    var fn = new Dictionary<string, object> { { "name", t.Name } };
                    if (t.Description != null) fn["description"] = t.Description;
                    fn["parameters"] = new RawJson(t.ParametersJsonSchema ?? "{\"type\":\"object\",\"properties\":{}}");
                    tools.Add(new Dictionary<string, object> { { "type", "function" }, { "function", fn } });
                }
                json["tools"] = tools;
            }
            if (request.ToolChoice != null)
            {
                json["tool_choice"] = request.ToolChoice.Mode != null
                    ? (object)request.ToolChoice.Mode
                    : new Dictionary<string, object> { { "type", "function" },
                        { "function", new Dictionary<string, object> { { "name", request.ToolChoice.FunctionName } } } };
            }
            if (request.ResponseFormat != null)
            {
                var f = request.ResponseFormat;
                var rf = new Dictionary<string, object> { { "type", f.Type } };
                if (f.SchemaJson != null)
                    rf["json_schema"] = new Dictionary<string, object> { { "name", f.Name }, { "schema", new RawJson(f.SchemaJson) }, { "strict", f.Strict } };
                json["response_format"] = rf;
            }
            if (request.RetrievedContext != null)
            {
                var chunks = new List<object>();
                foreach (var c in request.RetrievedContext)
                {
                    var chunk = new Dictionary<string, object> { { "id", c.Id }, { "content", c.Content } };
                    if (c.Source != null) chunk["source"] = c.Source;
                    if (c.Title != null) chunk["title"] = c.Title;
                    if (c.Score.HasValue) chunk["score"] = c.Score.Value;
                    chunks.Add(chunk);
                }
                json["retrieved_context"] = chunks;
            }
            if (request.AdditionalFields != null) foreach (var kv in request.AdditionalFields) json[kv.Key] = kv.Value;
            return Json.Write(json);
        }

        public ChatResponse SendChat(ChatRequest request, CancellationToken cancellationToken = default(CancellationToken))
        {
            return SendChat(request, null, cancellationToken);
        }

        public ChatResponse SendChat(ChatRequest request, Action<string> onToken, CancellationToken cancellationToken = default(CancellationToken))
        {
            if (request == null) throw new ArgumentNullException("request");
            cancellationToken.ThrowIfCancellationRequested();
            List<string> system;
            lock (pendingSystem) system = new List<string>(pendingSystem);
            byte[] body = Native.Utf8(RequestJson(request, system));
            var state = new CallState(handle, onToken, options.DefaultTelemetry);
            string response = state.Run(cb =>
            {
                IntPtr json;
                using (cancellationToken.Register(state.Cancel))
                {
                    uint status = Native.smallmind_chat_send(handle, body, cb, out json);
                    return new KeyValuePair<uint, IntPtr>(status, json);
                }
            });
            lock (pendingSystem) pendingSystem.RemoveRange(0, system.Count);
            // .NET's convention: an operation whose token was cancelled throws.
            cancellationToken.ThrowIfCancellationRequested();
            return Responses.Parse(response);
        }

        public void AddSystemMessage(string content)
        {
            if (content == null) throw new ArgumentNullException("content");
            lock (pendingSystem) pendingSystem.Add(content);
        }

        public string GetHistoryJson()
        {
            IntPtr json;
            SmallMindException.Check(Native.smallmind_chat_history(handle, out json));
            return Native.Take(json);
        }

        public SessionInfo GetSessionInfo()
        {
            var history = Json.Parse(GetHistoryJson());
            var messages = Json.List(history, "messages");
            int pending;
            lock (pendingSystem) pending = pendingSystem.Count;
            return new SessionInfo { SessionId = Json.Str(history, "session_id"), MessageCount = (messages == null ? 0 : messages.Count) + pending };
        }

        public string ExportSession()
        {
            IntPtr json;
            SmallMindException.Check(Native.smallmind_chat_export(handle, out json));
            return Native.Take(json);
        }

        public void Reset()
        {
            SmallMindException.Check(Native.smallmind_chat_reset(handle));
            lock (pendingSystem) pendingSystem.Clear();
        }

        public void Dispose() { handle.Dispose(); }
    }

    /// <summary>One request's callbacks. The C callbacks are static delegates (never collected)
    /// that find this object through a GCHandle in user_data. Every trampoline catches all
    /// exceptions: the first one is kept, the request is cancelled, and it is rethrown on the
    /// caller once the C call has returned. No exception unwinds through native frames.</summary>
    internal sealed class CallState
    {
        private readonly ChatHandle chat;
        private readonly Action<string> onToken;
        private readonly IChatTelemetry telemetry;
        private ExceptionDispatchInfo error;

        public CallState(ChatHandle chat, Action<string> onToken, IChatTelemetry telemetry)
        {
            this.chat = chat;
            this.onToken = onToken;
            this.telemetry = telemetry;
        }

        public void Cancel()
        {
            if (chat != null) Native.smallmind_chat_cancel(chat);
        }

        private void Fail(Exception e)
        {
            if (error == null) error = ExceptionDispatchInfo.Capture(e);
            Cancel();
        }

        private static CallState From(IntPtr userData) { return (CallState)GCHandle.FromIntPtr(userData).Target; }

        private static readonly OnTokenFn TokenFn = (ud, text, len) =>
        {
            var s = From(ud);
            if (s.error != null) return 1;
            try { s.onToken(Native.ReadUtf8(text, checked((int)len.ToUInt64()))); return 0; }
            catch (Exception e) { s.Fail(e); return 1; }
        };
        private static readonly OnRequestStartFn StartFn = (ud, sid, count) =>
        {
            var s = From(ud);
            try { s.telemetry.OnRequestStart(Native.ReadUtf8(sid), (int)count); } catch (Exception e) { s.Fail(e); }
        };
        private static readonly OnFirstTokenFn FirstFn = (ud, sid, ms) =>
        {
            var s = From(ud);
            try { s.telemetry.OnFirstToken(Native.ReadUtf8(sid), ms); } catch (Exception e) { s.Fail(e); }
        };
        private static readonly OnContextPolicyAppliedFn PolicyFn = (ud, sid, policy, before, after) =>
        {
            var s = From(ud);
            try { s.telemetry.OnContextPolicyApplied(Native.ReadUtf8(sid), Native.ReadUtf8(policy), (int)before, (int)after); }
            catch (Exception e) { s.Fail(e); }
        };
        private static readonly OnKvCacheAccessFn KvFn = (ud, sid, hit, cached) =>
        {
            var s = From(ud);
            try { s.telemetry.OnKvCacheAccess(Native.ReadUtf8(sid), hit, (int)cached); } catch (Exception e) { s.Fail(e); }
        };
        private static readonly OnRequestCompleteFn CompleteFn = (ud, sid, usage) =>
        {
            var s = From(ud);
            try
            {
                var u = (NativeUsage)Marshal.PtrToStructure(usage, typeof(NativeUsage));
                s.telemetry.OnRequestComplete(Native.ReadUtf8(sid), Responses.Usage(u));
            }
            catch (Exception e) { s.Fail(e); }
        };
        private static readonly OnToolCallFn ToolFn = (ud, sid, name, ms) =>
        {
            var s = From(ud);
            try { s.telemetry.OnToolCall(Native.ReadUtf8(sid), Native.ReadUtf8(name), ms); } catch (Exception e) { s.Fail(e); }
        };

        private static IntPtr Fp(Delegate d) { return Marshal.GetFunctionPointerForDelegate(d); }

        /// <summary>Runs `call` with this request's callbacks (in the loaded library's layout) and
        /// returns the response text, rethrowing a callback's exception first.</summary>
        public string Run(Func<IntPtr, KeyValuePair<uint, IntPtr>> call)
        {
            GCHandle self = GCHandle.Alloc(this);
            IntPtr block = IntPtr.Zero;
            try
            {
                IntPtr ud = GCHandle.ToIntPtr(self);
                IntPtr token = onToken != null ? Fp(TokenFn) : IntPtr.Zero;
                bool t = telemetry != null;
                if (Native.Abi >= 2)
                {
                    var cb = new ChatCallbacksV2
                    {
                        struct_size = (uint)Marshal.SizeOf(typeof(ChatCallbacksV2)),
                        user_data = ud, on_token = token,
                        on_request_start = t ? Fp(StartFn) : IntPtr.Zero,
                        on_first_token = t ? Fp(FirstFn) : IntPtr.Zero,
                        on_context_policy_applied = t ? Fp(PolicyFn) : IntPtr.Zero,
                        on_kv_cache_access = t ? Fp(KvFn) : IntPtr.Zero,
                        on_request_complete = t ? Fp(CompleteFn) : IntPtr.Zero,
                        on_tool_call = t ? Fp(ToolFn) : IntPtr.Zero,
                    };
                    block = Marshal.AllocHGlobal(Marshal.SizeOf(cb));
                    Marshal.StructureToPtr(cb, block, false);
                }
                else
                {
                    var cb = new ChatCallbacksV1
                    {
                        user_data = ud, on_token = token,
                        on_request_start = t ? Fp(StartFn) : IntPtr.Zero,
                        on_first_token = t ? Fp(FirstFn) : IntPtr.Zero,
                        on_context_policy_applied = t ? Fp(PolicyFn) : IntPtr.Zero,
                        on_kv_cache_access = t ? Fp(KvFn) : IntPtr.Zero,
                        on_request_complete = t ? Fp(CompleteFn) : IntPtr.Zero,
                    };
                    block = Marshal.AllocHGlobal(Marshal.SizeOf(cb));
                    Marshal.StructureToPtr(cb, block, false);
                }
                var result = call(block);
                string text = result.Key == 0 ? Native.Take(result.Value) : null;
                if (error != null) error.Throw();
                SmallMindException.Check(result.Key);
                return text;
            }
            finally
            {
                if (block != IntPtr.Zero) Marshal.FreeHGlobal(block);
                self.Free();
            }
        }
    }

    internal static class Responses
    {
        internal static UsageStats Usage(NativeUsage u)
        {
            return new UsageStats
            {
                PromptTokens = (int)u.prompt_tokens, CompletionTokens = (int)u.completion_tokens,
                TotalTokens = (int)u.total_tokens, CachedTokens = (int)u.cached_tokens,
                TimeToFirstTokenMs = u.time_to_first_token_ms, TokensPerSecond = u.decode_tokens_per_second,
                PrefillMs = u.prefill_ms, DecodeMs = u.decode_ms, PrefillTokensPerSecond = u.prefill_tokens_per_second,
            };
        }

        private static ChatRole Role(string role)
        {
            switch (role)
            {
                case "system": return ChatRole.System;
                case "user": return ChatRole.User;
                case "tool": return ChatRole.Tool;
                default: return ChatRole.Assistant;
            }
        }

        internal static ChatResponse Parse(string text)
        {
            object r = Json.Parse(text);
            var message = Json.Obj(r, "message");
            var usage = Json.Obj(r, "usage");
            var calls = new List<ToolCall>();
            var rawCalls = Json.List(message, "tool_calls");
            if (rawCalls != null)
                foreach (var c in rawCalls)
                {
                    var fn = Json.Obj(c, "function");
                    calls.Add(new ToolCall { Id = Json.Str(c, "id"), Name = Json.Str(fn, "name"), ArgumentsJson = Json.Str(fn, "arguments") });
                }
            var citations = new List<Citation>();
            var rawCitations = Json.List(r, "citations");
            if (rawCitations != null)
                foreach (var c in rawCitations)
                    citations.Add(new Citation { Id = Json.Str(c, "id"), Source = Json.Str(c, "source"), Title = Json.Str(c, "title"),
                        Snippet = Json.Str(c, "snippet"), Score = Json.NumOrNull(c, "score") });
            var results = new List<ToolResult>();
            var rawResults = Json.List(r, "tool_results");
            if (rawResults != null)
                foreach (var t in rawResults)
                    results.Add(new ToolResult { ToolCallId = Json.Str(t, "tool_call_id") ?? Json.Str(t, "id"), Name = Json.Str(t, "name"),
                        Content = Json.Str(t, "content"), RawJson = Json.Write(t) });
            var warnings = new List<string>();
            var rawWarnings = Json.List(r, "warnings");
            if (rawWarnings != null) foreach (var w in rawWarnings) warnings.Add(w as string ?? Json.Write(w));
            return new ChatResponse
            {
                Message = new ChatMessageV3 { Role = Role(Json.Str(message, "role")), Content = Json.Str(message, "content") ?? "", ToolCalls = calls },
                FinishReason = Json.Str(r, "finish_reason"),
                Usage = new UsageStats
                {
                    PromptTokens = (int)Json.Num(usage, "prompt_tokens"),
                    CompletionTokens = (int)Json.Num(usage, "completion_tokens"),
                    TotalTokens = (int)Json.Num(usage, "total_tokens"),
                    CachedTokens = (int)Json.Num(Json.Obj(usage, "prompt_tokens_details"), "cached_tokens"),
                    TimeToFirstTokenMs = Json.Num(usage, "time_to_first_token_ms"),
                    TokensPerSecond = Json.Num(usage, "decode_tokens_per_second"),
                    PrefillMs = Json.Num(usage, "prefill_ms"),
                    DecodeMs = Json.Num(usage, "decode_ms"),
                    PrefillTokensPerSecond = Json.Num(usage, "prefill_tokens_per_second"),
                },
                Citations = citations,
                ToolResults = results,
                Warnings = warnings,
                RawJson = text,
            };
        }
    }
}
