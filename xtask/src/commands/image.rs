//! `cargo xtask image`: boot media for hosts, a PXE bundle (`--pxe DIR`) and/or a GRUB ISO
//! (`--iso FILE`), built by `keel-image-builder`.
//!
//! Every input is read and checked first (options, configuration file, Xen, host tools, the
//! Keel image); only then is anything written, so a mistake costs one error line and leaves
//! no half-made media behind.

use std::path::{Path, PathBuf};

use keel_image_builder::config::DEFAULT_XEN_BINARY;
use keel_image_builder::{
    load_xen, source_date_epoch, write_iso, write_pxe, ImageError, IsoTools, KernelImage, Media,
    Settings,
};
use keel_tests::image::Profile;
use keel_tests::prereq::{self, Tool};

use crate::cli::CliError;
use crate::commands::build::{build_image, format_size};
use crate::error::XtaskError;
use crate::progress;

/// The parsed `image` options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageOptions {
    pub pxe: Option<PathBuf>,
    pub iso: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// The Keel image to use instead of building the release image.
    pub kernel: Option<PathBuf>,
    /// Settings given as flags; they override the configuration file's.
    pub flags: Settings,
}

/// Parses the words after `image`.
pub fn parse(words: &[String]) -> Result<ImageOptions, CliError> {
    let mut options = ImageOptions::default();
    let mut words = words.iter();
    while let Some(word) = words.next() {
        let (name, inline) = match word.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (word.as_str(), None),
        };
        let unknown = || CliError::UnknownOption {
            command: "image",
            option: name.to_string(),
        };
        if !name.starts_with("--") {
            return Err(unknown());
        }
        let flag = |set: &mut Option<bool>, to: bool| match &inline {
            None => {
                *set = Some(to);
                Ok(())
            }
            Some(value) => Err(CliError::InvalidValue {
                option: name.to_string(),
                value: value.clone(),
                expected: "no value",
            }),
        };
        if name == "--xen" || name == "--no-xen" {
            flag(&mut options.flags.xen, name == "--xen")?;
            continue;
        }
        let value = match inline.clone().or_else(|| words.next().cloned()) {
            Some(value) => value,
            None if is_valued(name) => {
                return Err(CliError::MissingValue {
                    option: name.to_string(),
                })
            }
            None => return Err(unknown()),
        };
        let nonempty = |value: String, expected: &'static str| {
            if value.is_empty() {
                Err(CliError::InvalidValue {
                    option: name.to_string(),
                    value,
                    expected,
                })
            } else {
                Ok(value)
            }
        };
        match name {
            "--pxe" => options.pxe = Some(nonempty(value, "a directory")?.into()),
            "--iso" => options.iso = Some(nonempty(value, "a file name")?.into()),
            "--config" => options.config = Some(nonempty(value, "a file name")?.into()),
            "--kernel" => options.kernel = Some(nonempty(value, "a file name")?.into()),
            "--xen-binary" => {
                options.flags.xen_binary = Some(nonempty(value, "a file name")?.into())
            }
            "--xen-args" => options.flags.xen_args = Some(value),
            "--dom0-mem" => options.flags.dom0_mem = Some(value),
            "--ip" => options.flags.ip = Some(value),
            "--gw" => options.flags.gw = Some(value),
            "--root-password-hash" => options.flags.root_password_hash = Some(value),
            "--append" => {
                options
                    .flags
                    .add_keel_words(&value)
                    .map_err(|_| CliError::InvalidValue {
                        option: name.to_string(),
                        value,
                        expected: "keel.NAME=VALUE words (Xen's options go in --xen-args)",
                    })?
            }
            _ => return Err(unknown()),
        }
    }
    if options.pxe.is_none() && options.iso.is_none() {
        return Err(CliError::ImageWithoutOutput);
    }
    Ok(options)
}

/// Options that take a value (so a missing one is reported as missing, not unknown).
fn is_valued(name: &str) -> bool {
    [
        "--pxe",
        "--iso",
        "--config",
        "--kernel",
        "--xen-binary",
        "--xen-args",
        "--dom0-mem",
        "--ip",
        "--gw",
        "--root-password-hash",
        "--append",
    ]
    .contains(&name)
}

pub fn run(words: &[String]) -> Result<(), XtaskError> {
    let options = parse(words)?;

    // 1. Everything is checked before anything is written.
    let file_settings = match &options.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let config = file_settings
        .overridden_by(options.flags.clone())
        .resolve()
        .map_err(|error| ImageError::Config { path: None, error })?;
    if config.xen && config.xen_binary == Path::new(DEFAULT_XEN_BINARY) {
        prereq::ensure(&[Tool::Xen])?;
    }
    let xen = load_xen(&config)?;
    let iso_tools = match &options.iso {
        Some(_) => {
            prereq::ensure(Tool::ISO)?;
            Some(IsoTools::find()?)
        }
        None => None,
    };
    let epoch = source_date_epoch()?;
    let kernel_path = match &options.kernel {
        Some(path) => path.clone(),
        None => build_image(Profile::Release)?.0,
    };
    let kernel = KernelImage::load(&kernel_path)?;
    let media = Media {
        config,
        kernel,
        xen,
        epoch,
    };

    // 2. Writing.
    if let Some(dir) = &options.pxe {
        let step = progress::step(format!("writing the PXE bundle to {}", dir.display()));
        let files = write_pxe(&media, dir)?;
        step.done();
        for file in files {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            println!("{}: {}", file.display(), format_size(size));
        }
    }
    if let (Some(file), Some(tools)) = (&options.iso, &iso_tools) {
        let step = progress::step(format!("writing the ISO {}", file.display()));
        write_iso(&media, tools, file)?;
        step.done();
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        println!("{}: {}", file.display(), format_size(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_option_in_both_spellings() {
        let mut args = words(
            "--pxe out/pxe --iso=keel.iso --config host.conf --kernel=k.elf --xen \
             --xen-binary /x/xen.gz --dom0-mem=2G --ip 10.0.0.5/24 --gw=10.0.0.1 \
             --root-password-hash $argon2id$x",
        );
        args.extend(["--xen-args".into(), "console=com1 loglvl=all".into()]);
        args.extend(["--append".into(), "keel.log=debug keel.panic=halt".into()]);
        let parsed = parse(&args);
        let Ok(options) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(options.pxe, Some("out/pxe".into()));
        assert_eq!(options.iso, Some("keel.iso".into()));
        assert_eq!(options.config, Some("host.conf".into()));
        assert_eq!(options.kernel, Some("k.elf".into()));
        let flags = &options.flags;
        assert_eq!(flags.xen, Some(true));
        assert_eq!(flags.xen_binary, Some("/x/xen.gz".into()));
        assert_eq!(flags.dom0_mem.as_deref(), Some("2G"));
        assert_eq!(flags.ip.as_deref(), Some("10.0.0.5/24"));
        assert_eq!(flags.gw.as_deref(), Some("10.0.0.1"));
        assert_eq!(flags.root_password_hash.as_deref(), Some("$argon2id$x"));
        assert_eq!(flags.xen_args.as_deref(), Some("console=com1 loglvl=all"));
        assert_eq!(
            flags.keel_options,
            [
                ("log".to_string(), "debug".to_string()),
                ("panic".to_string(), "halt".to_string())
            ]
        );
    }

    #[test]
    fn no_xen_overrides_and_flags_take_no_value() {
        let options = parse(&words("--iso k.iso --xen --no-xen"));
        assert_eq!(options.map(|o| o.flags.xen), Ok(Some(false)));
        assert_eq!(
            parse(&words("--iso k.iso --xen=yes")),
            Err(CliError::InvalidValue {
                option: "--xen".into(),
                value: "yes".into(),
                expected: "no value"
            })
        );
    }

    #[test]
    fn mistakes_are_usage_errors() {
        assert_eq!(parse(&words("--xen")), Err(CliError::ImageWithoutOutput));
        assert_eq!(
            parse(&words("--pxe out --colour red")),
            Err(CliError::UnknownOption {
                command: "image",
                option: "--colour".into()
            })
        );
        assert_eq!(
            parse(&words("--pxe")),
            Err(CliError::MissingValue {
                option: "--pxe".into()
            })
        );
        assert_eq!(
            parse(&words("--pxe out extra")),
            Err(CliError::UnknownOption {
                command: "image",
                option: "extra".into()
            })
        );
        assert!(matches!(
            parse(&words("--pxe out --append console=hvc0")),
            Err(CliError::InvalidValue { option, .. }) if option == "--append"
        ));
        assert!(matches!(
            parse(&words("--iso=")),
            Err(CliError::InvalidValue { option, .. }) if option == "--iso"
        ));
    }

    /// Runs `image` with `line` and returns its error, checking that `out` was not created.
    fn fails_without_writing(name: &str, line: &str) -> String {
        let dir = std::env::temp_dir().join(format!("xtask-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let out = dir.join("out");
        let mut args = vec!["--pxe".to_string(), out.display().to_string()];
        args.extend(
            line.replace("DIR", &dir.display().to_string())
                .split_whitespace()
                .map(str::to_string),
        );
        let result = run(&args);
        assert!(!out.exists(), "{name}: output written despite the error");
        let _ = std::fs::remove_dir_all(&dir);
        match result {
            Err(error) => {
                let text = error.to_string();
                assert!(!text.contains('\n'), "{name}: not one line: {text}");
                text
            }
            Ok(()) => panic!("{name}: succeeded"),
        }
    }

    #[test]
    fn bad_inputs_fail_with_one_line_before_anything_is_written() {
        let unreadable = fails_without_writing("unreadable", "--config DIR/nonexistent.conf");
        assert!(
            unreadable.starts_with("cannot read config "),
            "{unreadable}"
        );

        let dir = std::env::temp_dir().join(format!("xtask-image-conf-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let conf = dir.join("host.conf");
        assert!(std::fs::write(&conf, "ip = dhcp\nhostname = h1\n").is_ok());
        let unknown = fails_without_writing("unknown-key", &format!("--config {}", conf.display()));
        assert!(unknown.ends_with("line 2: unknown key 'hostname' (known: ip, gw, root_password_hash, xen, xen_binary, xen_args, dom0_mem, keel.NAME)"), "{unknown}");
        let _ = std::fs::remove_dir_all(&dir);

        let bad_option = fails_without_writing("bad-option", "--append keel.log=loud");
        assert!(
            bad_option.starts_with("keel: bad option 'keel.log=loud'"),
            "{bad_option}"
        );

        let no_xen = fails_without_writing(
            "no-xen",
            "--xen --xen-binary DIR/xen-4.17.gz --kernel DIR/keel.elf",
        );
        assert!(
            no_xen.starts_with("cannot read the Xen hypervisor "),
            "{no_xen}"
        );

        let no_kernel = fails_without_writing("no-kernel", "--kernel DIR/keel.elf");
        assert!(
            no_kernel.starts_with("cannot read the Keel image "),
            "{no_kernel}"
        );
    }

    #[test]
    fn a_file_that_is_not_keel_is_refused() {
        let dir = std::env::temp_dir().join(format!("xtask-image-notkeel-{}", std::process::id()));
        assert!(std::fs::create_dir_all(&dir).is_ok());
        let kernel = dir.join("keel.elf");
        assert!(std::fs::write(&kernel, "#!/bin/sh\n").is_ok());
        let error = fails_without_writing("not-keel", &format!("--kernel {}", kernel.display()));
        assert!(error.ends_with("not a little-endian ELF64 file"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn image_is_a_command_with_its_words() {
        assert_eq!(
            crate::cli::parse(["image", "--pxe", "d"]),
            Ok(crate::cli::Command::Image(vec!["--pxe".into(), "d".into()]))
        );
    }
}
