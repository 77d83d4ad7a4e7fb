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
