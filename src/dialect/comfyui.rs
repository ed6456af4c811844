//! GenStudio's hosted ComfyUI workflows, under a base URL like
//! `https://cloud.infini-ai.com/api/maas/comfy_task_api`: `POST /prompt` with
//! `{"workflow_id", "prompt": {node: {"inputs": ...}}}` answers
//! `{"code": 0, "msg", "data": {"prompt_id", ...}}`; `POST /get_task_info` with
//! `{"comfy_task_ids": [...], "url_expire_period"}` answers one `comfy_task_info` entry per
//! task, its `status` 1 (queued), 2 (running), 3 (succeeded: `final_files` are the images),
//! 4 (failed) or 5 (not permitted); `POST /cancel` and `POST /upload/image` (multipart)
//! beside them. Errors are `{"code": non-zero, "msg"}`.

use serde_json::{Map, Value, json};

use super::{TaskPoll, TaskState, Wire};
use crate::billing::Units;
use crate::config::Endpoint;
use crate::error::openai_error;

pub struct ComfyUi;

/// How long result URLs last when the client's poll does not say (GenStudio's own default
/// in its examples).
const URL_EXPIRE_SECS: u64 = 1800;

/// The longest a client may ask result URLs to last (a day): a link to a result must not
/// outlive the billing of it by years. Longer asks are cut to this.
pub const URL_EXPIRE_MAX_SECS: u64 = 86_400;

impl Wire for ComfyUi {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn serves(&self) -> Endpoint {
        Endpoint::Workflow
    }

    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        (endpoint == Endpoint::Workflow).then_some("/prompt")
    }

    fn error(&self, v: &Map<String, Value>) -> Option<Value> {
        envelope_error(v)
    }

    fn task_id(&self, submitted: &Map<String, Value>) -> Option<String> {
        let id = submitted.get("data")?.get("prompt_id")?;
        id.as_str().map(str::to_owned)
    }

    fn task_poll(&self, task_id: &str, asked: &Map<String, Value>) -> Option<TaskPoll> {
        let expire = asked
            .get("url_expire_period")
            .and_then(Value::as_u64)
            .filter(|secs| *secs > 0)
            .unwrap_or(URL_EXPIRE_SECS)
            .min(URL_EXPIRE_MAX_SECS);
        Some(TaskPoll {
            path: "/get_task_info".into(),
            body: Some(json!({"comfy_task_ids": [task_id], "url_expire_period": expire})),
        })
    }

    fn task_state(&self, result: &Map<String, Value>) -> Option<TaskState> {
        match info(result)?.get("status")?.as_u64()? {
            3 => Some(TaskState::Succeeded),
            4 | 5 => Some(TaskState::Failed),
            _ => Some(TaskState::Pending),
        }
    }

    fn units(&self, _endpoint: Endpoint, answer: &Map<String, Value>) -> Units {
        let images = info(answer)
            .and_then(|i| i.get("final_files"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Units {
            images: images as u64,
            ..Units::default()
        }
    }
}

/// GenStudio's task APIs answer `{"code", "msg", "data"}`: a `code` other than 0 is an
/// error, whatever the HTTP status.
pub fn envelope_error(v: &Map<String, Value>) -> Option<Value> {
    match v.get("code") {
        Some(Value::Number(code)) if code.as_i64() != Some(0) => {
            let message = v
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("the backend reported an error");
            Some(openai_error(
                message,
                "upstream_error",
                Value::Number(code.clone()),
                None,
            ))
        }
        _ => None,
    }
}

/// The one task's entry of a `get_task_info` answer.
pub fn info(answer: &Map<String, Value>) -> Option<&Map<String, Value>> {
    answer
        .get("data")?
        .get("comfy_task_info")?
        .as_array()?
        .first()?
        .as_object()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn states_images_ids_and_errors_are_read() {
        let answer = |status: u64| {
            obj(
                json!({"code": 0, "msg": "success", "data": {"comfy_task_info": [{
                "comfy_task_id": "p1", "status": status,
                "final_files": ["https://x/1.png", "https://x/2.png"]}]}}),
            )
        };
        assert_eq!(ComfyUi.task_state(&answer(1)), Some(TaskState::Pending));
        assert_eq!(ComfyUi.task_state(&answer(2)), Some(TaskState::Pending));
        assert_eq!(ComfyUi.task_state(&answer(3)), Some(TaskState::Succeeded));
        assert_eq!(ComfyUi.task_state(&answer(4)), Some(TaskState::Failed));
        assert_eq!(ComfyUi.task_state(&answer(5)), Some(TaskState::Failed));
        assert_eq!(ComfyUi.units(Endpoint::Workflow, &answer(3)).images, 2);
        assert!(ComfyUi.error(&answer(3)).is_none());
        let error = ComfyUi.error(&obj(json!({"code": 60000, "msg": "no such workflow"})));
        assert_eq!(error.unwrap()["error"]["code"], 60000);
        let submitted = obj(json!({"code": 0, "msg": "ok", "data": {"prompt_id": "p9"}}));
        assert_eq!(ComfyUi.task_id(&submitted).as_deref(), Some("p9"));
        let poll = ComfyUi
            .task_poll("p9", &obj(json!({"url_expire_period": 60})))
            .unwrap();
        assert_eq!(poll.body.unwrap()["url_expire_period"], 60);
        let ten_years = obj(json!({"url_expire_period": 315_360_000}));
        let poll = ComfyUi.task_poll("p9", &ten_years).unwrap();
        assert_eq!(poll.body.unwrap()["url_expire_period"], URL_EXPIRE_MAX_SECS);
    }
}
