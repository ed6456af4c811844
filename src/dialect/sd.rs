//! GenStudio's Stable Diffusion image tasks, under a base URL like
//! `https://cloud.infini-ai.com/api/maas/sd_task_api`. `POST /create` takes the SD WebUI
//! body GenStudio's tutorial shows (`type`, `prompt`, `batch_size`, `n_iter`,
//! `override_settings.sd_model_checkpoint`, ...); `POST /get_result` with `{"task_id"}`
//! polls it. Both answer in the platform's envelope, `{"code", "msg", "data"}`, as its
//! ComfyUI API does. The fields inside `data` are not in any documentation reachable
//! while this was written (tests/fixtures/README.md): they are read tolerantly, so a
//! shape that differs stays safe. The task id is `data.task_id` (or `taskId`); its state
//! is `data.status`, a ComfyUI-style number (3 succeeded, 4 or 5 failed) or a word
//! (`succeeded`, `failed`, ...), and anything else counts as pending, so a task whose
//! end cannot be read is never billed by guess and expires at no cost; its images are
//! `data.images` (or `final_files`).

use serde_json::{Map, Value, json};

use super::comfyui::envelope_error;
use super::json::Object;
use super::request::{Members, ModelAt, whole_number};
use super::{Does, Route, TaskPoll, TaskState, Wire};
use crate::billing::Units;
use crate::config::Endpoint;
use crate::error::Error;

pub struct Sd;

impl Wire for Sd {
    fn name(&self) -> &'static str {
        "sd"
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["stable_diffusion"]
    }

    fn serves(&self) -> Endpoint {
        Endpoint::Images
    }

    fn routes(&self) -> &'static [Route] {
        const ROUTES: &[Route] = &[
            Route::submit(
                "/api/maas/sd_task_api/create",
                Endpoint::Images,
                "image_task",
            ),
            Route {
                path: "/api/maas/sd_task_api/get_result",
                does: Does::Poll,
            },
        ];
        ROUTES
    }

    fn takes(&self) -> &'static str {
        "sd"
    }

    /// The checkpoint names the model.
    fn model_at(&self) -> ModelAt {
        ModelAt {
            member: "override_settings",
            inside: Some("sd_model_checkpoint"),
            shown: "override_settings.sd_model_checkpoint",
        }
    }

    /// Clients name the checkpoint file as GenStudio knows it.
    fn names_backend_model(&self) -> bool {
        true
    }

    /// A task makes `batch_size` images `n_iter` times.
    fn results(&self, body: &dyn Members) -> Result<Option<u64>, Error> {
        let batch = whole_number(body.member("batch_size"), "batch_size", 1)?.unwrap_or(1);
        let rounds = whole_number(body.member("n_iter"), "n_iter", 1)?.unwrap_or(1);
        Ok(Some(batch.saturating_mul(rounds)))
    }

    fn results_member(&self) -> &'static str {
        "batch_size"
    }

    /// An SD prompt is no LLM's: tasks are billed per image and task.
    fn prompt_tokens(&self, _endpoint: Endpoint, _prompt: &Map<String, Value>) -> u64 {
        0
    }

    fn task_ids(&self, asked: &Map<String, Value>) -> Result<Vec<String>, Error> {
        match asked.get("task_id").or_else(|| asked.get("taskId")) {
            Some(Value::String(id)) if !id.is_empty() => Ok(vec![id.clone()]),
            _ => Err(Error::invalid("'task_id' must name the task", "task_id")),
        }
    }

    fn path(&self, endpoint: Endpoint) -> Option<&'static str> {
        (endpoint == Endpoint::Images).then_some("/create")
    }

    fn task_path(&self, endpoint: Endpoint) -> Option<&'static str> {
        self.path(endpoint)
    }

    fn error(&self, v: &Object) -> Option<Value> {
        envelope_error(v)
    }

    fn task_id(&self, submitted: &Map<String, Value>) -> Option<String> {
        let data = submitted.get("data")?;
        let id = data.get("task_id").or_else(|| data.get("taskId"))?;
        id.as_str().map(str::to_owned)
    }

    fn task_poll(&self, task_id: &str, _asked: &Map<String, Value>) -> Option<TaskPoll> {
        Some(TaskPoll {
            path: "/get_result".into(),
            body: Some(json!({ "task_id": task_id })),
        })
    }

    fn task_state(&self, result: &Map<String, Value>) -> Option<TaskState> {
        let status = result.get("data")?.get("status")?;
        Some(match status {
            Value::Number(n) => match n.as_u64() {
                Some(3) => TaskState::Succeeded,
                Some(4 | 5) => TaskState::Failed,
                _ => TaskState::Pending,
            },
            Value::String(word) => match word.to_ascii_lowercase().as_str() {
                "succeeded" | "success" | "succeed" | "finished" | "completed" | "done" => {
                    TaskState::Succeeded
                }
                "failed" | "failure" | "error" | "cancelled" | "canceled" => TaskState::Failed,
                _ => TaskState::Pending,
            },
            _ => TaskState::Pending,
        })
    }

    fn units(&self, _endpoint: Endpoint, answer: &Map<String, Value>) -> Units {
        let images = answer
            .get("data")
            .and_then(|d| d.get("images").or_else(|| d.get("final_files")))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Units {
            images: images as u64,
            ..Units::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn result(status: Value) -> Map<String, Value> {
        obj(
            json!({"code": 0, "msg": "success", "data": {"task_id": "t1", "status": status,
            "images": ["https://x/1.png", "https://x/2.png"]}}),
        )
    }

    #[test]
    fn states_are_read_as_numbers_or_words_and_anything_else_is_pending() {
        for (status, state) in [
            (json!(1), TaskState::Pending),
            (json!(2), TaskState::Pending),
            (json!(3), TaskState::Succeeded),
            (json!(4), TaskState::Failed),
            (json!(5), TaskState::Failed),
            (json!("waiting"), TaskState::Pending),
            (json!("running"), TaskState::Pending),
            (json!("SUCCEEDED"), TaskState::Succeeded),
            (json!("success"), TaskState::Succeeded),
            (json!("failed"), TaskState::Failed),
            (json!("cancelled"), TaskState::Failed),
            (json!("something new"), TaskState::Pending),
            (json!(null), TaskState::Pending),
        ] {
            assert_eq!(
                Sd.task_state(&result(status.clone())),
                Some(state),
                "{status}"
            );
        }
        assert_eq!(Sd.task_state(&obj(json!({"code": 0, "data": {}}))), None);
    }

    #[test]
    fn ids_images_polls_and_errors_are_read() {
        let created = obj(json!({"code": 0, "msg": "success", "data": {"task_id": "t9"}}));
        assert_eq!(Sd.task_id(&created).as_deref(), Some("t9"));
        let created = obj(json!({"code": 0, "data": {"taskId": "t8"}}));
        assert_eq!(Sd.task_id(&created).as_deref(), Some("t8"));
        assert_eq!(Sd.units(Endpoint::Images, &result(json!(3))).images, 2);
        let poll = Sd.task_poll("t9", &Map::new()).unwrap();
        assert_eq!(poll.path, "/get_result");
        assert_eq!(poll.body.unwrap(), json!({"task_id": "t9"}));
        assert!(Sd.error(&Object::of(&result(json!(3)))).is_none());
        let error = obj(json!({"code": 10001, "msg": "prompt is required"}));
        let error = Sd.error(&Object::of(&error));
        assert_eq!(error.unwrap()["error"]["code"], 10001);
        assert_eq!(Sd.path(Endpoint::Images), Some("/create"));
        assert_eq!(Sd.path(Endpoint::Chat), None);
    }
}
