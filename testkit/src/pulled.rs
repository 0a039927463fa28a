//! What a `prepuller pull -o json` run printed and how it exited, read as the tests read it.

use serde_json::Value;

pub struct Pulled {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Pulled {
    /// The row of `images` whose `normalized` reference is `image`.
    pub fn row(&self, image: &str) -> Value {
        let json: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", self.stdout, self.stderr));
        json["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["normalized"] == image)
            .unwrap_or_else(|| panic!("no row for {image}: {json:#}"))
            .clone()
    }

    /// The run exited 0 and pulled each of `images`.
    pub fn assert_pulled<S: AsRef<str>>(&self, images: &[S]) {
        let names: Vec<&str> = images.iter().map(AsRef::as_ref).collect();
        assert_eq!(
            self.code, 0,
            "{names:?}\nstdout {}\nstderr {}",
            self.stdout, self.stderr
        );
        for image in names {
            assert_eq!(self.row(image)["result"], "pulled", "{}", self.stdout);
        }
    }

    /// The one image failed permanently, after one attempt (exit 1); its reason.
    pub fn refused(&self, image: &str) -> String {
        assert_eq!(self.code, 1, "{}\n{}", self.stdout, self.stderr);
        let row = self.row(image);
        assert_eq!(row["errorClass"], "permanent", "{row:#}");
        assert_eq!(row["attempts"], 1, "{row:#}");
        row["reason"].as_str().unwrap().to_string()
    }
}
