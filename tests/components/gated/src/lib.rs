//! A test component that meets approval gates in the middle of a run.

use airlock_sdk::{approval, files};

wit_bindgen::generate!({ path: "wit", world: "gated" });

struct Gated;

fn describe(e: files::Error) -> String {
    e.to_string()
}

impl Guest for Gated {
    fn write_between(path: String, data: String) -> Result<String, String> {
        files::write("before.txt", "1").map_err(describe)?;
        let gated = files::write(&path, &data);
        files::write("after.txt", "1").map_err(describe)?;
        match gated {
            Ok(()) => Ok("written".into()),
            Err(e) => Err(describe(e)),
        }
    }

    fn ask(summary: String, detail: String) -> Result<String, String> {
        approval::request(&summary, &detail).map_err(|e| e.to_string())?;
        files::write("approved.txt", &summary).map_err(describe)?;
        Ok("approved".into())
    }

    fn wasi_write(path: String, data: String) -> Result<String, String> {
        let gated = std::fs::write(&path, &data);
        files::write("after.txt", "1").map_err(describe)?;
        gated.map(|()| "written".into()).map_err(|e| e.to_string())
    }

    fn write(path: String, data: String) -> Result<String, String> {
        files::write(&path, &data).map_err(describe)?;
        Ok("written".into())
    }

    fn write_then_spin(path: String, ms: u64) -> Result<String, String> {
        files::write(&path, "x").map_err(describe)?;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(ms) {
            std::hint::spin_loop();
        }
        Ok("done".into())
    }

    fn echo(value: String) -> String {
        value
    }
}

export!(Gated);
