//! An OCI image layout (image-spec 1.x) in one tar, from one layer: what
//! `ctr image import`, `podman load` and `skopeo copy oci-archive:` read.
//! A Docker `manifest.json` rides along for `docker load` before 25.0.
//! Deterministic: the same layer gives the same bytes.

use std::collections::HashMap;

use anyhow::Context as _;
use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder,
    MediaType, OciLayoutBuilder, Os, RootFsBuilder,
};
use sha2::Digest as _;

/// containerd names an imported image by this annotation (the OCI one
/// holds only a tag by the spec's letter; containerd and podman both read
/// a full name from it too, and get the same).
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// How a container of the image runs unless told otherwise.
pub struct Settings<'a> {
    /// Fully qualified: docker.io/library/NAME:TAG, as the kubelet
    /// normalizes `NAME:TAG`.
    pub name: &'a str,
    pub path: &'a str,
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(bytes: &[u8]) -> anyhow::Result<Digest> {
    format!("sha256:{}", sha256_hex(bytes)).parse().context("a sha256 digest")
}

/// JSON with its keys sorted (serde_json's map), so that documents holding
/// maps (annotations) come out the same each time.
fn json<T: serde::Serialize>(doc: &T) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(doc)?)?)
}

/// The archive: `layer` (an uncompressed tar) gzipped as the image's only
/// layer, its configuration, manifest and index.
pub fn archive(layer: &[u8], settings: &Settings) -> anyhow::Result<Vec<u8>> {
    let gz = {
        // flate2 writes a zero mtime and no file name: no build date leaks in.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, layer)?;
        enc.finish()?
    };
    let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec![format!("PATH={}", settings.path)])
                .entrypoint(strings(settings.entrypoint))
                .cmd(strings(settings.cmd))
                .build()?,
        )
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![format!("sha256:{}", sha256_hex(layer))]).build()?)
        .build()?;
    let config = json(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(MediaType::ImageConfig, config.len() as u64, digest(&config)?))
        .layers(vec![Descriptor::new(MediaType::ImageLayerGzip, gz.len() as u64, digest(&gz)?)])
        .build()?;
    let manifest = json(&manifest)?;
    let mut entry = Descriptor::new(MediaType::ImageManifest, manifest.len() as u64, digest(&manifest)?);
    entry.set_annotations(Some(HashMap::from([
        (CONTAINERD_NAME.to_owned(), settings.name.to_owned()),
        (ANNOTATION_REF_NAME.to_owned(), settings.name.to_owned()),
    ])));
    let index = ImageIndexBuilder::default().schema_version(2u32).media_type(MediaType::ImageIndex).manifests(vec![entry]).build()?;
    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build()?;
    let blob = |bytes: &[u8]| format!("blobs/sha256/{}", sha256_hex(bytes));
    // Docker's own format, naming the same blobs.
    let docker = serde_json::json!([{
        "Config": blob(&config),
        "RepoTags": [settings.name.trim_start_matches("docker.io/library/")],
        "Layers": [blob(&gz)],
    }]);

    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(if path.ends_with('/') { 0o755 } else { 0o644 });
        header.set_entry_type(if path.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        tar.append_data(&mut header, path, bytes).with_context(|| format!("adding {path}"))
    };
    add("oci-layout", &json(&layout)?)?;
    add("index.json", &json(&index)?)?;
    add("manifest.json", &serde_json::to_vec(&docker)?)?;
    add("blobs/", &[])?;
    add("blobs/sha256/", &[])?;
    for bytes in [&config, &manifest, &gz] {
        add(&blob(bytes), bytes)?;
    }
    Ok(tar.into_inner()?)
}

/// The image's file system back out of an archive written by `archive`,
/// every digest on the way checked: the uncompressed layer.
pub fn layer_of(archive: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut files = HashMap::new();
    for entry in tar::Archive::new(archive).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        files.insert(path, bytes);
    }
    let blob = |digest: &Digest| -> anyhow::Result<&Vec<u8>> {
        let bytes = files.get(&format!("blobs/sha256/{}", digest.digest())).with_context(|| format!("no blob {digest}"))?;
        anyhow::ensure!(sha256_hex(bytes) == digest.digest(), "blob {digest}: its content has another digest");
        Ok(bytes)
    };
    let index: oci_spec::image::ImageIndex = serde_json::from_slice(files.get("index.json").context("no index.json")?)?;
    let manifest = index.manifests().first().context("index.json: no manifest")?;
    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(blob(manifest.digest())?)?;
    let config: oci_spec::image::ImageConfiguration = serde_json::from_slice(blob(manifest.config().digest())?)?;
    let gz = blob(manifest.layers().first().context("manifest: no layer")?.digest())?;
    let mut layer = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut layer).context("gunzipping the layer")?;
    let diff_id = config.rootfs().diff_ids().first().context("config: no diff_id")?;
    anyhow::ensure!(*diff_id == format!("sha256:{}", sha256_hex(&layer)), "the layer does not match the config's diff_id");
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_round_trip_is_deterministic() {
        let mut layer = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        layer.append_data(&mut header, "etc/hello", &b"hello"[..]).unwrap();
        let layer = layer.into_inner().unwrap();
        let settings = Settings { name: "docker.io/library/x:dev", path: "/bin", entrypoint: &["x"], cmd: &["--help"] };
        let a = archive(&layer, &settings).unwrap();
        assert_eq!(a, archive(&layer, &settings).unwrap());
        assert_eq!(layer_of(&a).unwrap(), layer);
    }
}
