//! Image → token patches in the reference's order (einops
//! `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`): tokens row-major over the patch grid, features
//! within a token row-major over the patch's pixels with the channels innermost.

/// `image` is `[channels, height, width]` row-major; `out` receives
/// `(height/p)·(width/p)` tokens of `p·p·channels` features.
pub fn patchify(image: &[f32], channels: usize, height: usize, width: usize, p: usize, out: &mut [f32]) {
    debug_assert_eq!(image.len(), channels * height * width);
    debug_assert!(height % p == 0 && width % p == 0);
    let (gh, gw) = (height / p, width / p);
    let dim = p * p * channels;
    debug_assert_eq!(out.len(), gh * gw * dim);
    for h in 0..gh {
        for w in 0..gw {
            let token = &mut out[(h * gw + w) * dim..(h * gw + w + 1) * dim];
            for p1 in 0..p {
                for p2 in 0..p {
                    for c in 0..channels {
                        token[(p1 * p + p2) * channels + c] = image[c * height * width + (h * p + p1) * width + (w * p + p2)];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-computed example: a 2-channel 4×4 image, 2×2 patches. Pixel value = 100·c + 10·row + col.
    #[test]
    fn matches_the_einops_order() {
        let (c, h, w) = (2, 4, 4);
        let image: Vec<f32> =
            (0..c).flat_map(|ch| (0..h).flat_map(move |r| (0..w).map(move |col| (100 * ch + 10 * r + col) as f32))).collect();
        let mut out = vec![0f32; 4 * 8];
        patchify(&image, c, h, w, 2, &mut out);
        // Token 0 = top-left patch: (r0,c0), (r0,c1), (r1,c0), (r1,c1), channels innermost.
        assert_eq!(&out[0..8], &[0., 100., 1., 101., 10., 110., 11., 111.]);
        // Token 1 = top-right patch (columns 2, 3).
        assert_eq!(&out[8..16], &[2., 102., 3., 103., 12., 112., 13., 113.]);
        // Token 2 = bottom-left patch (rows 2, 3).
        assert_eq!(&out[16..24], &[20., 120., 21., 121., 30., 130., 31., 131.]);
        assert_eq!(&out[24..32], &[22., 122., 23., 123., 32., 132., 33., 133.]);
    }
}
