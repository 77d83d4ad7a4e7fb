//! A trained run's data settings, pinned so that evaluating or predicting on other data sees
//! the classes (by name) and the inputs the run was trained with.

use crate::image_folder::{ImageSettings, ImageSize};
use crate::{DataFacts, TaskConfig, TaskSpec};

impl TaskConfig {
    /// Fixes what loading would otherwise derive from the data: `image-folder`'s class names
    /// (its folders are then mapped by name, and a folder outside them is an error) and image
    /// size (other images are brought to it), `arrays`' number of classes.
    pub fn pin_to_run(&mut self, facts: &DataFacts, spec: &TaskSpec) {
        match self {
            TaskConfig::ImageFolder { size, classes, .. } => {
                if let Some(names) = &facts.class_names {
                    *classes = Some(names.clone());
                }
                if size.is_none() {
                    *size = facts.image_size.map(ImageSize::HeightWidth);
                }
            }
            TaskConfig::Arrays { classes, .. } => *classes = Some(spec.classes),
            _ => {}
        }
    }

    /// How `image-folder` turns images into tokens; `None` for the other tasks.
    pub fn image_settings(&self) -> Option<ImageSettings> {
        match self {
            TaskConfig::ImageFolder { size, fit, color, patch, .. } => {
                Some(ImageSettings { size: size.map(ImageSize::height_width), fit: *fit, color: *color, patch: *patch })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InputKind, Padding};
    use serde_json::json;

    #[test]
    fn pinning_fixes_what_loading_would_derive_and_survives_a_round_trip() {
        let spec = TaskSpec {
            name: "image-folder".into(),
            input: InputKind::Dense { dim: 16 },
            seq_len: 35,
            predictions: 1,
            classes: 2,
            readout_tokens: 1,
            padding: Padding::None,
        };
        let facts = DataFacts { class_names: Some(vec!["b".into(), "a".into()]), image_size: Some([28, 20]) };
        let mut cfg: TaskConfig = serde_json::from_value(json!({ "name": "image-folder", "path": "x", "color": "gray" })).unwrap();
        cfg.pin_to_run(&facts, &spec);
        let settings = cfg.image_settings().unwrap();
        assert_eq!((settings.size, settings.patch, settings.channels()), (Some((28, 20)), 4, 1));
        let value = serde_json::to_value(&cfg).unwrap();
        assert_eq!((&value["size"], &value["classes"], &value["fit"]), (&json!([28, 20]), &json!(["b", "a"]), &json!("crop")));
        assert_eq!(serde_json::from_value::<TaskConfig>(value).unwrap(), cfg);
        // A size the run set stays as it was.
        let mut square: TaskConfig = serde_json::from_value(json!({ "name": "image-folder", "size": 32 })).unwrap();
        square.pin_to_run(&facts, &spec);
        assert_eq!(square.image_settings().unwrap().size, Some((32, 32)));
        // arrays: the run's number of classes.
        let mut arrays: TaskConfig = serde_json::from_value(json!({ "name": "arrays", "vocab": 7 })).unwrap();
        arrays.pin_to_run(&DataFacts::default(), &TaskSpec { classes: 5, ..spec });
        assert_eq!(arrays, serde_json::from_value(json!({ "name": "arrays", "vocab": 7, "classes": 5 })).unwrap());
        assert!(arrays.image_settings().is_none());
        assert!(serde_json::from_value::<TaskConfig>(json!({ "name": "image-folder", "fit": "squash" })).is_err());
    }
}
