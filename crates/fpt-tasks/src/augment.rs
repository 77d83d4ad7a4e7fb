//! Image augmentation on `[channels, height, width]` float images, as the reference's
//! torchvision pipeline applies it to tensors (before normalisation, so padding and rotation
//! fill are 0 = black): `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`,
//! `RandomRotation(20)` (nearest neighbour, no expansion).

use crate::rng::TaskRng;
use rand::Rng;

/// Pads by `pad` zeros on every side and crops the original size at a uniform offset in
/// `0..=2·pad` (both axes).
pub fn random_crop(image: &[f32], c: usize, h: usize, w: usize, pad: usize, rng: &mut TaskRng) -> Vec<f32> {
    let dy = rng.random_range(0..=2 * pad) as isize - pad as isize;
    let dx = rng.random_range(0..=2 * pad) as isize - pad as isize;
    shift(image, c, h, w, dy, dx)
}

/// Output pixel (y, x) = input (y + dy, x + dx), 0 outside.
pub fn shift(image: &[f32], c: usize, h: usize, w: usize, dy: isize, dx: isize) -> Vec<f32> {
    let mut out = vec![0f32; image.len()];
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = x as isize + dx;
                if sx >= 0 && sx < w as isize {
                    out[ch * h * w + y * w + x] = image[ch * h * w + sy as usize * w + sx as usize];
                }
            }
        }
    }
    out
}

/// Mirrors left-right in place.
pub fn hflip(image: &mut [f32], c: usize, h: usize, w: usize) {
    for row in image.chunks_mut(w).take(c * h) {
        row.reverse();
    }
}

/// Rotates by `degrees` about the image centre, nearest neighbour, 0 outside the source.
pub fn rotate(image: &[f32], c: usize, h: usize, w: usize, degrees: f64) -> Vec<f32> {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let mut out = vec![0f32; image.len()];
    for y in 0..h {
        for x in 0..w {
            let (ry, rx) = (y as f64 - cy, x as f64 - cx);
            // Inverse rotation: where in the source this output pixel comes from.
            let sx = (cos * rx + sin * ry + cx).round();
            let sy = (-sin * rx + cos * ry + cy).round();
            if sx < 0.0 || sy < 0.0 || sx >= w as f64 || sy >= h as f64 {
                continue;
            }
            let (sx, sy) = (sx as usize, sy as usize);
            for ch in 0..c {
                out[ch * h * w + y * w + x] = image[ch * h * w + sy * w + sx];
            }
        }
    }
    out
}

/// The reference's training augmentation: crop (pad 4), flip with p = 0.5, rotation uniform
/// in ±`max_degrees`.
pub fn cifar_train(image: &[f32], c: usize, h: usize, w: usize, max_degrees: f64, rng: &mut TaskRng) -> Vec<f32> {
    let mut img = random_crop(image, c, h, w, 4, rng);
    if rng.random::<bool>() {
        hflip(&mut img, c, h, w);
    }
    let angle = rng.random_range(-max_degrees..=max_degrees);
    rotate(&img, c, h, w, angle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::stream;

    fn image(c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..c * h * w).map(|i| (i % 251) as f32 / 250.0 + 0.001).collect()
    }

    #[test]
    fn flip_is_an_involution_and_mirrors() {
        let img = image(3, 8, 6);
        let mut f = img.clone();
        hflip(&mut f, 3, 8, 6);
        assert_ne!(f, img);
        assert_eq!(f[0], img[5]);
        hflip(&mut f, 3, 8, 6);
        assert_eq!(f, img);
    }

    #[test]
    fn zero_shift_and_zero_rotation_are_identity() {
        let img = image(3, 32, 32);
        assert_eq!(shift(&img, 3, 32, 32, 0, 0), img);
        assert_eq!(rotate(&img, 3, 32, 32, 0.0), img);
        // A 90° turn is an exact pixel permutation of a square image; four give the identity.
        let mut r = img.clone();
        for _ in 0..4 {
            r = rotate(&r, 3, 32, 32, 90.0);
        }
        assert_eq!(r, img);
    }

    #[test]
    fn shift_moves_and_fills_with_zero() {
        let img = image(1, 4, 4);
        let s = shift(&img, 1, 4, 4, 1, -1);
        assert_eq!(s[0], 0.0); // x = 0 reads source x = -1
        assert_eq!(s[1], img[4]); // (0,1) <- (1,0)
        assert!(s[12..16].iter().all(|v| *v == 0.0)); // last row reads row 4
    }

    #[test]
    fn augmentation_keeps_shape_and_values() {
        let img = image(3, 32, 32);
        let mut rng = stream(5, &[]);
        for _ in 0..50 {
            let out = cifar_train(&img, 3, 32, 32, 20.0, &mut rng);
            assert_eq!(out.len(), img.len());
            // Every value is an input value or the zero fill.
            assert!(out.iter().all(|v| *v == 0.0 || img.contains(v)));
            assert!(out.iter().any(|v| *v != 0.0));
        }
        let a = cifar_train(&img, 3, 32, 32, 20.0, &mut stream(9, &[1]));
        let b = cifar_train(&img, 3, 32, 32, 20.0, &mut stream(9, &[1]));
        assert_eq!(a, b, "same seed, same augmentation");
    }
}
