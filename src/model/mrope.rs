//! Multimodal rotary positions (M-RoPE), as Qwen2-VL's language model takes them: every
//! token has three positions (time, height, width). A text token has the same number on
//! all three, one more than the token before it; an image's placeholder tokens, in the
//! vision tower's merged-patch order, sit on a grid that starts where the text left off
//! (time fixed, height and width counting merged patch rows and columns), and the text
//! after the image goes on from one past the grid's largest position. Generated tokens
//! continue as text: position `i` of the sequence is `i + delta` on all three axes.

/// One image's patch grid (time, height, width), as its processor reported it.
pub type GridThw = [usize; 3];

/// The three positions of each prompt token, and the offset that later tokens add to their
/// index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    /// `[3][tokens]`: time, height and width positions.
    pub positions: [Vec<i64>; 3],
    /// Largest position + 1 − number of tokens.
    pub delta: i64,
}

/// Why a prompt's placeholders do not fit its images.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MropeError {
    #[error("the prompt has {found} image placeholder tokens where its images need {expected}")]
    PlaceholderCount { found: usize, expected: usize },
    #[error("image grid {grid:?} does not divide by the merge size {merge}")]
    Grid { grid: GridThw, merge: usize },
}

/// The positions of `ids`, where each run of `image_token` ids stands for the next image in
/// `grids` (each image `t * h * w / merge²` tokens).
pub fn mrope_positions(ids: &[u32], image_token: u32, grids: &[GridThw], merge: usize) -> Result<MropePositions, MropeError> {
    let found = ids.iter().filter(|&&t| t == image_token).count();
    let mut expected = 0;
    for &grid in grids {
        if grid[1] % merge != 0 || grid[2] % merge != 0 {
            return Err(MropeError::Grid { grid, merge });
        }
        expected += grid[0] * grid[1] * grid[2] / (merge * merge);
    }
    if found != expected {
        return Err(MropeError::PlaceholderCount { found, expected });
    }
    let mut positions: [Vec<i64>; 3] = std::array::from_fn(|_| Vec::with_capacity(ids.len()));
    let mut next = 0i64;
    let mut images = grids.iter();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != image_token {
            for axis in positions.iter_mut() {
                axis.push(next);
            }
            next += 1;
            i += 1;
            continue;
        }
        let [t, h, w] = *images.next().expect("placeholder count checked against the grids");
        let (h, w) = (h / merge, w / merge);
        for ti in 0..t {
            for hi in 0..h {
                for wi in 0..w {
                    positions[0].push(next + ti as i64);
                    positions[1].push(next + hi as i64);
                    positions[2].push(next + wi as i64);
                }
            }
        }
        i += t * h * w;
        next += h.max(w) as i64;
    }
    let largest = positions.iter().flat_map(|a| a.iter().copied()).max().unwrap_or(-1);
    Ok(MropePositions { delta: largest + 1 - ids.len() as i64, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_positions_count_up_on_every_axis() {
        let p = mrope_positions(&[5, 6, 7], 9, &[], 2).unwrap();
        assert_eq!(p.positions, [vec![0, 1, 2], vec![0, 1, 2], vec![0, 1, 2]]);
        assert_eq!(p.delta, 0);
    }

    #[test]
    fn an_image_sits_on_its_merged_grid() {
        // Two text tokens, a 4x6-patch image (2x3 merged: 6 tokens), one text token.
        let ids = [1, 2, 9, 9, 9, 9, 9, 9, 3];
        let p = mrope_positions(&ids, 9, &[[1, 4, 6]], 2).unwrap();
        assert_eq!(p.positions[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5]);
        assert_eq!(p.positions[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5]);
        assert_eq!(p.positions[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5]);
        assert_eq!(p.delta, 6 - 9);
    }

    #[test]
    fn placeholders_must_fit_the_images() {
        assert_eq!(
            mrope_positions(&[9, 9, 9], 9, &[[1, 4, 4]], 2),
            Err(MropeError::PlaceholderCount { found: 3, expected: 4 })
        );
        assert!(matches!(mrope_positions(&[9], 9, &[[1, 3, 4]], 2), Err(MropeError::Grid { .. })));
    }
}
