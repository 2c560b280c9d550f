//! Ensembles (`platform: "ensemble"`): a DAG of composing models wired by tensor names.
//!
//! In `ensemble_scheduling.step[]`, `input_map` maps a composing model's input name (key) to an
//! ensemble tensor (value), and `output_map` a composing model's output (key) to an ensemble
//! tensor (value). Ensemble tensors are the ensemble's own inputs and outputs plus every map
//! value. Execution (in `Infer`) runs each step as soon as its inputs exist, independent steps
//! concurrently, and every step through its composing model's own scheduler, so ensemble
//! traffic is batched like any other.
//!
//! Steps on one GPU: when a step's model computes on a CUDA device and every tensor it produces
//! is consumed only by steps on that same device (and is not an ensemble output), the step asks
//! for its outputs to stay in device memory ([`EnsemblePlan::device_outputs`]); the next steps
//! read them there, with no trip through the host.

use std::collections::BTreeSet;
use std::sync::Arc;

use nereid_protocol::inference::ModelConfig;

use crate::model::ModelVersion;

#[derive(Debug, Clone)]
pub struct Step {
    pub model: String,
    /// Empty for "latest" (`model_version: -1`).
    pub version: String,
    /// (composing model input, ensemble tensor)
    pub inputs: Vec<(String, String)>,
    /// (composing model output, ensemble tensor)
    pub outputs: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct EnsemblePlan {
    pub steps: Vec<Step>,
}

impl EnsemblePlan {
    pub fn from_config(config: &ModelConfig) -> Result<Self, String> {
        let m = &config.name;
        let scheduling = config
            .ensemble_scheduling()
            .filter(|s| !s.step.is_empty())
            .ok_or_else(|| {
                format!("ensemble '{m}' must specify 'ensemble_scheduling' with at least one step")
            })?;
        let sorted = |map: &std::collections::HashMap<String, String>| {
            let mut pairs: Vec<(String, String)> =
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            pairs.sort();
            pairs
        };
        let steps = scheduling
            .step
            .iter()
            .map(|s| Step {
                model: s.model_name.clone(),
                version: if s.model_version < 0 {
                    String::new()
                } else {
                    s.model_version.to_string()
                },
                inputs: sorted(&s.input_map),
                outputs: sorted(&s.output_map),
            })
            .collect();
        Ok(EnsemblePlan { steps })
    }

    /// For each step, the device to leave its outputs on (see the module documentation), given
    /// the device each step's model computes on (`None`: the CPU, or instances on several
    /// devices) and the ensemble's output tensors.
    pub fn device_outputs(
        &self,
        devices: &[Option<usize>],
        ensemble_outputs: &[&str],
    ) -> Vec<Option<usize>> {
        self.steps
            .iter()
            .zip(devices)
            .map(|(step, &device)| {
                let device = device?;
                let stays = step.outputs.iter().all(|(_, tensor)| {
                    !ensemble_outputs.contains(&tensor.as_str())
                        && self.steps.iter().zip(devices).all(|(consumer, &on)| {
                            on == Some(device) || !consumer.inputs.iter().any(|(_, t)| t == tensor)
                        })
                });
                stays.then_some(device)
            })
            .collect()
    }

    pub fn composing_models(&self) -> BTreeSet<&str> {
        self.steps.iter().map(|s| s.model.as_str()).collect()
    }

    /// Checks the plan against its composing models (Triton's validation messages).
    pub fn validate(
        &self,
        config: &ModelConfig,
        lookup: impl Fn(&str, &str) -> Option<Arc<ModelVersion>>,
    ) -> Result<(), String> {
        let e = &config.name;
        let mut available: BTreeSet<&str> = config.input.iter().map(|i| i.name.as_str()).collect();
        let mut pending: Vec<(&Step, Arc<ModelVersion>)> = Vec::new();
        let mut missing = Vec::new();
        for step in &self.steps {
            match lookup(&step.model, &step.version) {
                Some(model) => pending.push((step, model)),
                None => missing.push(step.model.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "ensemble {e} contains models that are not available or ambiguous: {}",
                missing.join(", ")
            ));
        }
        for (step, model) in &pending {
            if config.max_batch_size > model.config.max_batch_size {
                return Err(format!(
                    "ensemble {e} allows maximum batch size {}, but it contains model {} which only allows maximum batch size to be {}",
                    config.max_batch_size, step.model, model.config.max_batch_size
                ));
            }
            for input in &model.inputs {
                if !input.optional && !step.inputs.iter().any(|(k, _)| *k == input.name) {
                    return Err(format!("in ensemble {e}, input {} in model {} is not mapped to any ensemble tensors", input.name, step.model));
                }
            }
            for (key, _) in &step.inputs {
                if !model.inputs.iter().any(|i| i.name == *key) {
                    return Err(format!("in ensemble {e}, ensemble tensor mapped to model {}'s input {key}, which the model does not have", step.model));
                }
            }
            for (key, _) in &step.outputs {
                if !model.outputs.iter().any(|o| o.name == *key) {
                    return Err(format!(
                        "in ensemble {e}, model {} has no output {key}",
                        step.model
                    ));
                }
            }
        }
        // Simulate execution: every step must become runnable, every output be produced.
        while !pending.is_empty() {
            let before = pending.len();
            pending.retain(|(step, _)| {
                if step
                    .inputs
                    .iter()
                    .all(|(_, t)| available.contains(t.as_str()))
                {
                    available.extend(step.outputs.iter().map(|(_, t)| t.as_str()));
                    false
                } else {
                    true
                }
            });
            if pending.len() == before {
                let (step, _) = &pending[0];
                let waiting: Vec<&str> = step
                    .inputs
                    .iter()
                    .map(|(_, t)| t.as_str())
                    .filter(|t| !available.contains(t))
                    .collect();
                return Err(format!(
                    "in ensemble {e}, step for model {} waits for tensor(s) {} that no step produces (or the steps form a cycle)",
                    step.model,
                    waiting.join(", ")
                ));
            }
        }
        for output in &config.output {
            if !available.contains(output.name.as_str()) {
                return Err(format!(
                    "in ensemble {e}, ensemble output {} is not produced by any step",
                    output.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(model: &str, inputs: &[&str], outputs: &[&str]) -> Step {
        let pairs = |names: &[&str]| {
            names
                .iter()
                .map(|t| (format!("in_{t}"), t.to_string()))
                .collect()
        };
        Step {
            model: model.into(),
            version: String::new(),
            inputs: pairs(inputs),
            outputs: pairs(outputs),
        }
    }

    #[test]
    fn outputs_stay_on_a_device_only_for_consumers_on_that_device() {
        // x -> a -> h -> b -> y, and h -> c -> z (c elsewhere or on the CPU).
        let plan = EnsemblePlan {
            steps: vec![
                step("a", &["x"], &["h"]),
                step("b", &["h"], &["y"]),
                step("c", &["h"], &["z"]),
            ],
        };
        let outputs = ["y", "z"];
        // All three on GPU 0: a's output stays there; b and c produce ensemble outputs.
        assert_eq!(
            plan.device_outputs(&[Some(0), Some(0), Some(0)], &outputs),
            [Some(0), None, None]
        );
        // A consumer on the CPU or on another GPU needs h on the host.
        assert_eq!(
            plan.device_outputs(&[Some(0), Some(0), None], &outputs),
            [None, None, None]
        );
        assert_eq!(
            plan.device_outputs(&[Some(0), Some(0), Some(1)], &outputs),
            [None, None, None]
        );
        // A producer on the CPU never asks.
        assert_eq!(
            plan.device_outputs(&[None, Some(0), Some(0)], &outputs),
            [None, None, None]
        );
        // An intermediate tensor that is also an ensemble output goes to the host.
        assert_eq!(
            plan.device_outputs(&[Some(0), Some(0), Some(0)], &["h", "y", "z"]),
            [None, None, None]
        );
    }
}
