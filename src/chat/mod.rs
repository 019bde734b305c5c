//! The chat runtime: messages, templates, context policies, sessions with their own KV
//! cache, and the JSON of the chat calls. Knows nothing of C.

mod message;
mod policy;
mod runtime;
mod session;
pub mod structured;
mod template;
mod types;

pub use message::{FunctionCall, Message, Role, ToolCall};
pub use policy::{ContextLimits, ContextPolicy, PolicyOutcome, apply_policy};
pub use runtime::Chat;
pub use session::{
    ChatEvents, ContextReport, HistoryMode, HostReply, PreparedPrompt, Session, SessionConfig,
    Turn, TurnOutput,
};
pub use template::{BuiltinFormat, ChatTemplate, RenderedPrompt, TemplateContext, TemplateError};
pub use types::{
    ChatOptions, ChatRequest, EXPORT_FORMAT, EXPORT_VERSION, ExportEnvelope, random_session_id,
    render_json, response_json,
};
