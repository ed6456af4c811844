//! Zhipu's GLM API (`https://open.bigmodel.cn/api/paas/v4`): chat is OpenAI's shape (usage
//! on the last chunk of every stream, errors as `{"error":{"code":"1214","message":...}}`);
//! chat also runs as an asynchronous task (`POST /async/chat/completions` answers an `id`,
//! `GET /async-result/{id}` answers `task_status` `PROCESSING`, then `SUCCESS` with
//! `choices` and `usage`, or `FAILED`); CogView draws images (`/images/generations`, one
//! `data` entry per image).

use serde_json::{Map, Value};

use super::{Does, Route, TaskPoll, TaskState, Wire};
use crate::config::Endpoint;

pub struct Zhipu;

impl Wire for Zhipu {
    fn name(&self) -> &'static str {
        "zhipu"
    }

    fn routes(&self) -> &'static [Route] {
        const ROUTES: &[Route] = &[
            Route::named("/api/paas/v4/chat/completions", Endpoint::Chat),
            Route::named("/api/paas/v4/images/generations", Endpoint::Images),
            Route::submit(
                "/api/paas/v4/async/chat/completions",
                Endpoint::Chat,
                "async_chat",
            ),
            Route {
                path: "/api/paas/v4/async-result/{id}",
                does: Does::Poll,
            },
        ];
        ROUTES
    }

    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        match endpoint {
            Endpoint::Chat => Some("/chat/completions"),
            Endpoint::Embeddings => Some("/embeddings"),
            Endpoint::Images => Some("/images/generations"),
            Endpoint::Rerank => None,
        }
    }

    fn task_path(&self, endpoint: Endpoint) -> Option<&'static str> {
        (endpoint == Endpoint::Chat).then_some("/async/chat/completions")
    }

    fn task_poll(&self, task_id: &str, _asked: &Map<String, Value>) -> Option<TaskPoll> {
        Some(TaskPoll {
            path: format!("/async-result/{task_id}"),
            body: None,
        })
    }

    fn task_id(&self, submitted: &Map<String, Value>) -> Option<String> {
        submitted.get("id")?.as_str().map(str::to_owned)
    }

    fn task_state(&self, result: &Map<String, Value>) -> Option<TaskState> {
        match result.get("task_status")?.as_str()? {
            "SUCCESS" => Some(TaskState::Succeeded),
            "FAILED" => Some(TaskState::Failed),
            _ => Some(TaskState::Pending),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_states_are_read_and_anything_else_is_pending() {
        let state =
            |status: &str| Zhipu.task_state(json!({"task_status": status}).as_object().unwrap());
        assert_eq!(state("SUCCESS"), Some(TaskState::Succeeded));
        assert_eq!(state("FAILED"), Some(TaskState::Failed));
        assert_eq!(state("PROCESSING"), Some(TaskState::Pending));
        assert_eq!(Zhipu.task_state(&Map::new()), None);
        let submitted = json!({"id": "t-1", "task_status": "PROCESSING"});
        assert_eq!(
            Zhipu.task_id(submitted.as_object().unwrap()).as_deref(),
            Some("t-1")
        );
    }
}
