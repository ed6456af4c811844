//! GenStudio's hosted ComfyUI workflows, under a base URL like
//! `https://cloud.infini-ai.com/api/maas/comfy_task_api`: `POST /prompt` with
//! `{"workflow_id", "prompt": {node: {"inputs": ...}}}` answers
//! `{"code": 0, "msg", "data": {"prompt_id", ...}}`; `POST /get_task_info` with
//! `{"comfy_task_ids": [...], "url_expire_period"}` answers one `comfy_task_info` entry per
//! task, its `status` 1 (queued), 2 (running), 3 (succeeded: `final_files` are the images),
//! 4 (failed) or 5 (not permitted); `POST /cancel` and `POST /upload/image` (multipart)
//! beside them. Errors are `{"code": non-zero, "msg"}`.

use serde_json::{Map, Value, json};

use super::json::{Json, Object};
use super::request::{MAX_RESULTS, Members, ModelAt};
use super::{Does, Route, TaskPoll, TaskState, Wire};
use crate::billing::Units;
use crate::config::Endpoint;
use crate::error::{Error, openai_error};

pub struct ComfyUi;

/// Tasks one `get_task_info` may name.
const MAX_IDS: usize = 100;

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
        Endpoint::Images
    }

    fn routes(&self) -> &'static [Route] {
        const ROUTES: &[Route] = &[
            Route::submit(
                "/api/maas/comfy_task_api/prompt",
                Endpoint::Images,
                "workflow",
            ),
            Route {
                path: "/api/maas/comfy_task_api/get_task_info",
                does: Does::Poll,
            },
            Route {
                path: "/api/maas/comfy_task_api/cancel",
                does: Does::Cancel,
            },
            Route {
                path: "/api/maas/comfy_task_api/upload/image",
                does: Does::Upload,
            },
        ];
        ROUTES
    }

    fn takes(&self) -> &'static str {
        "comfyui"
    }

    /// A workflow is named by its `workflow_id`.
    fn model_at(&self) -> ModelAt {
        ModelAt::member("workflow_id")
    }

    /// A run makes the batches its nodes ask for (`batch_size` inputs); a run that sets
    /// none makes the hosted workflow's own, at least one image.
    fn results(&self, body: &dyn Members) -> Result<Option<u64>, Error> {
        let prompt = body.value("prompt").unwrap_or(Value::Null);
        Ok(Some(workflow_batches(&prompt)?.max(1)))
    }

    fn results_member(&self) -> &'static str {
        "prompt"
    }

    /// A workflow's inputs are nodes, billed per image and run: no prompt to count.
    fn prompt_tokens(&self, _endpoint: Endpoint, _prompt: &Map<String, Value>) -> u64 {
        0
    }

    /// `comfy_task_ids` (a list of 1 to `MAX_IDS`), `comfy_task_id` or `prompt_id`.
    fn task_ids(&self, asked: &Map<String, Value>) -> Result<Vec<String>, Error> {
        let ids: Vec<Value> = match (
            asked.get("comfy_task_ids"),
            asked
                .get("comfy_task_id")
                .or_else(|| asked.get("prompt_id")),
        ) {
            (Some(Value::Array(ids)), _) => ids.clone(),
            (None, Some(id)) => vec![id.clone()],
            _ => {
                return Err(Error::invalid(
                    "'comfy_task_ids' must list the tasks",
                    "comfy_task_ids",
                ));
            }
        };
        if ids.is_empty() || ids.len() > MAX_IDS {
            return Err(Error::invalid(
                format!("'comfy_task_ids' must name 1 to {MAX_IDS} tasks"),
                "comfy_task_ids",
            ));
        }
        ids.into_iter()
            .map(|id| match id {
                Value::String(id) if !id.is_empty() => Ok(id),
                _ => Err(Error::invalid(
                    "task ids must be non-empty strings",
                    "comfy_task_ids",
                )),
            })
            .collect()
    }

    /// One `comfy_task_info` list of every task's entry.
    fn merge_polls(&self, answers: &[&Map<String, Value>]) -> Option<Value> {
        let infos: Vec<Value> = answers
            .iter()
            .map(|answer| info(answer).cloned().map_or(Value::Null, Value::Object))
            .collect();
        Some(json!({"code": 0, "msg": "success", "data": {"comfy_task_info": infos}}))
    }

    fn task_cancel(&self, task_id: &str) -> Option<TaskPoll> {
        Some(TaskPoll {
            path: "/cancel".into(),
            body: Some(json!({ "comfy_task_id": task_id })),
        })
    }

    fn upload_path(&self) -> Option<&'static str> {
        Some("/upload/image")
    }

    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        (endpoint == Endpoint::Images).then_some("/prompt")
    }

    fn task_path(&self, endpoint: Endpoint) -> Option<&'static str> {
        self.path(endpoint)
    }

    fn error(&self, v: &Object) -> Option<Value> {
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
pub fn envelope_error(v: &Object) -> Option<Value> {
    match v.get("code") {
        Some(Json::Number(code)) if code.as_i64() != Some(0) => {
            let message = v.str("msg");
            Some(openai_error(
                message.unwrap_or("the backend reported an error"),
                "upstream_error",
                Value::Number(code.clone()),
                None,
            ))
        }
        _ => None,
    }
}

/// The images a run's nodes ask for: the sum of their `batch_size` inputs, each a whole
/// number of at least 1 or such a number as a string (ComfyUI takes both). An input linked
/// to another node's output (`["5", 0]`) is known only when the run is: the run is then
/// held for `MAX_RESULTS` images, the most one may ask for. Anything else (a float, zero,
/// a negative, other text) is refused: it would reach the backend while the hold counted
/// one image.
fn workflow_batches(prompt: &Value) -> Result<u64, Error> {
    let Some(nodes) = prompt.as_object() else {
        return Ok(0);
    };
    let refused = || {
        Error::invalid(
            "a node's 'batch_size' input must be a whole number of at least 1, as a number or a string, or a link to another node",
            "prompt",
        )
    };
    let mut images = 0u64;
    for node in nodes.values() {
        let Some(batch) = node.get("inputs").and_then(|i| i.get("batch_size")) else {
            continue;
        };
        let batch = match batch {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            Value::Array(link) if link.len() == 2 => Some(MAX_RESULTS),
            _ => None,
        };
        images = images.saturating_add(batch.filter(|n| *n >= 1).ok_or_else(refused)?);
    }
    Ok(images)
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
        assert_eq!(ComfyUi.units(Endpoint::Images, &answer(3)).images, 2);
        assert!(ComfyUi.error(&Object::of(&answer(3))).is_none());
        let error = obj(json!({"code": 60000, "msg": "no such workflow"}));
        let error = ComfyUi.error(&Object::parse(&Value::Object(error).to_string()).unwrap());
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
