//! PNG copies of the SVG plots, rasterised with resvg. Text needs a font: the system's
//! fonts are loaded once per report where the machine has any; without fonts the text
//! is left out and every line, bar and cell is still drawn.

use resvg::tiny_skia::{Color, Pixmap, Transform};
use resvg::usvg::{self, fontdb};

use crate::error::{Error, Result};

/// Reusable rasteriser (loading the system fonts is the slow part).
pub struct Rasterizer {
    options: usvg::Options<'static>,
}

/// Families tried for the SVGs' `sans-serif` when fontdb's default (Arial) is absent.
const SANS_FALLBACKS: [&str; 4] = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "FreeSans"];

impl Rasterizer {
    /// With the system's fonts (none is fine).
    pub fn new() -> Self {
        let mut db = fontdb::Database::new();
        db.load_system_fonts();
        Self::with_fonts(db)
    }

    /// Without any font: text is left out, everything else is drawn.
    pub fn without_fonts() -> Self {
        Self::with_fonts(fontdb::Database::new())
    }

    /// With the given fonts; an empty database renders no text.
    pub fn with_fonts(mut db: fontdb::Database) -> Self {
        let has = |db: &fontdb::Database, family: &str| {
            db.faces()
                .any(|f| f.families.iter().any(|(name, _)| name == family))
        };
        let sans = db.family_name(&fontdb::Family::SansSerif).to_string();
        if !has(&db, &sans) {
            let pick = SANS_FALLBACKS
                .iter()
                .find(|f| has(&db, f))
                .map(|f| f.to_string())
                .or_else(|| {
                    // Any family at all, the alphabetically first so the choice is stable.
                    db.faces()
                        .flat_map(|f| f.families.iter().map(|(n, _)| n.clone()))
                        .min()
                });
            if let Some(family) = pick {
                db.set_sans_serif_family(family.clone());
                db.set_serif_family(family);
            }
        }
        Self {
            options: usvg::Options {
                fontdb: std::sync::Arc::new(db),
                ..Default::default()
            },
        }
    }

    /// Number of font faces available for text.
    pub fn font_faces(&self) -> usize {
        self.options.fontdb.len()
    }

    /// The SVG as a PNG of the SVG's own size on a white background.
    pub fn png(&self, svg: &str) -> Result<Vec<u8>> {
        let tree = usvg::Tree::from_str(svg, &self.options)
            .map_err(|e| Error::Report(format!("SVG does not parse: {e}")))?;
        let size = tree.size().to_int_size();
        let mut pixmap = Pixmap::new(size.width(), size.height()).ok_or_else(|| {
            Error::Report(format!(
                "cannot rasterise an SVG of {}×{}",
                size.width(),
                size.height()
            ))
        })?;
        pixmap.fill(Color::WHITE);
        resvg::render(&tree, Transform::identity(), &mut pixmap.as_mut());
        pixmap
            .encode_png()
            .map_err(|e| Error::Report(format!("PNG encoding: {e}")))
    }
}

impl Default for Rasterizer {
    fn default() -> Self {
        Self::new()
    }
}
