//! `archive`, `archive verify` and `restore` with the archive in Azure Blob Storage, as
//! processes: against Azurite (`AZURITE_BLOB_ENDPOINT`, `AZURITE_BLOB_CONTAINER`, started by
//! `./scripts/test` through `tools/azurite/start`) and the Cosmos-protocol test server in
//! `COSMOS_ENDPOINT`. An archive of a live account written to a blob prefix holds every document
//! as the server does, passes `archive verify`, restores into an empty database identical
//! document for document; a chunk object re-uploaded with one flipped byte is named by
//! `archive verify` and refused by `restore`; `kill -9` during `archive` (after a chunk is
//! recorded, and after a chunk object is uploaded but before it is recorded) and during
//! `restore`, then a re-run, ends where an uninterrupted run ends.
#![allow(clippy::unwrap_used)]

mod support;
use support::archive_rig::{
    AZURITE_KEY, Documents, add_chunk, archive_files, archive_to, command, kill_at, read_back,
    required, restore_from, run, seeded_source, succeed, without_system,
};

use std::process::Command;

use mystira_migrate::archive::Store;
use serde_json::Value;

/// A new, empty prefix in Azurite's container, as the path-style URL the binary takes.
fn blob_target(tag: &str) -> String {
    format!(
        "{}/{}/test-{tag}-{}",
        required("AZURITE_BLOB_ENDPOINT").trim_end_matches('/'),
        required("AZURITE_BLOB_CONTAINER"),
        uuid::Uuid::new_v4().simple()
    )
}

/// The test's own handle on the prefix, to read and damage objects behind the binary's back.
fn blob_store(target: &str) -> Store {
    Store::open_with(target, &[("azure_storage_account_key", AZURITE_KEY)]).unwrap()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn read_object(store: &Store, name: &str) -> Vec<u8> {
    block_on(store.read(name))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} is not in the container"))
}

fn objects(store: &Store) -> Vec<String> {
    block_on(store.list()).unwrap()
}

fn manifest(store: &Store) -> Value {
    serde_json::from_slice(&read_object(store, "manifest.json")).unwrap()
}

/// Every document in the archive's chunk objects, downloaded and decompressed by the test.
fn archived(store: &Store) -> Documents {
    let mut out = Documents::new();
    for chunk in manifest(store)["chunks"].as_array().unwrap() {
        let file = chunk["file"].as_str().unwrap();
        let container = chunk["container"].as_str().unwrap();
        add_chunk(&mut out, container, file, &read_object(store, file));
    }
    out
}

/// The binary with Azurite's account key in the environment, as an operator would give it.
fn with_key(mut command: Command) -> Command {
    command.env("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY);
    command
}

fn archive(cosmos_db: &str, target: &str) -> Command {
    with_key(archive_to(cosmos_db, target))
}

fn verify(target: &str) -> (i32, Value, String) {
    run(with_key(command(
        "unused",
        &["archive", "verify", "--json", target],
    )))
}

fn restore(target: &str, database: &str) -> Command {
    with_key(restore_from(target, database, &[]))
}

fn finding_codes(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn an_archive_in_azurite_verifies_catches_a_flipped_byte_and_restores_identically() {
    let (source_db, in_source) = seeded_source("roundtrip");
    let target = blob_target("roundtrip");
    let store = blob_store(&target);

    let report = succeed(archive(&source_db, &target));
    assert_eq!(report["outcome"], "created", "{report}");
    assert_eq!(report["dir"], target.as_str());
    // the chunks in the container hold every document exactly as the server does
    assert_eq!(
        archived(&store),
        in_source,
        "the archive is not what the server holds"
    );
    let m = manifest(&store);
    assert!(m["finished_at"].is_string(), "{m}");
    assert_eq!(
        objects(&store),
        archive_files(&m),
        "objects beside the manifest's"
    );
    for chunk in m["chunks"].as_array().unwrap() {
        let bytes = read_object(&store, chunk["file"].as_str().unwrap());
        assert_eq!(chunk["bytes"], bytes.len() as u64, "{chunk}");
    }
    let (code, report, text) = verify(&target);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        report["chunks_checked"],
        m["chunks"].as_array().unwrap().len()
    );

    // restore from the container into an empty database; read back independently
    let restored_db = format!("{source_db}-restored");
    let restored = succeed(restore(&target, &restored_db));
    assert_eq!(restored["outcome"], "restored", "{restored}");
    assert_eq!(restored["matches"], true, "{restored}");
    assert_eq!(
        without_system(&read_back(&restored_db)),
        without_system(&in_source),
        "the restored database differs from the source"
    );
    // the checkpoint lives beside the archive, in the container
    let state = restored["state_file"].as_str().unwrap();
    let state_name = state.rsplit('/').next().unwrap();
    assert!(state.starts_with(&target), "{state}");
    assert!(objects(&store).contains(&state_name.to_owned()), "{state}");
    let again = succeed(restore(&target, &restored_db));
    assert_eq!(again["outcome"], "already_restored", "{again}");

    // one flipped byte in one chunk object, re-uploaded: verify names it, exit 1
    let victim = m["chunks"][2]["file"].as_str().unwrap().to_owned();
    let mut bytes = read_object(&store, &victim);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x04;
    block_on(store.write(&victim, bytes.clone())).unwrap();
    let (code, report, text) = verify(&target);
    assert_eq!(code, 1, "{text}");
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{text}");
    assert_eq!(findings[0]["code"], "chunk_hash_differs", "{text}");
    assert_eq!(findings[0]["chunk"], victim.as_str(), "{text}");
    // and restore refuses it before writing anything
    let damaged_db = format!("{source_db}-damaged");
    let (code, _, text) = run(restore(&target, &damaged_db));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&victim), "{text}");
    assert!(
        read_back(&damaged_db).is_empty(),
        "a damaged archive was restored"
    );

    // a missing chunk object is named too
    bytes[at] ^= 0x04;
    block_on(store.write(&victim, bytes)).unwrap();
    assert_eq!(verify(&target).0, 0);
    block_on(store.remove(std::slice::from_ref(&victim))).unwrap();
    let (code, report, text) = verify(&target);
    assert_eq!(code, 1, "{text}");
    assert_eq!(finding_codes(&report), ["chunk_missing"], "{text}");
}

#[test]
fn archive_to_azurite_killed_at_a_chunk_resumes_and_a_killed_restore_from_it_finishes() {
    let (source_db, in_source) = seeded_source("kill");
    // killed after a chunk is recorded, and after a chunk object is uploaded but before the
    // manifest records it (the re-run must delete that object and read its documents again)
    for point in ["archive-recorded:2", "archive-renamed:3"] {
        let target = blob_target(&point.replace(':', "-"));
        let store = blob_store(&target);
        kill_at(archive(&source_db, &target), point);
        let before = manifest(&store);
        assert!(
            before["finished_at"].is_null(),
            "{point}: finished before the kill"
        );
        assert_eq!(before["chunks"].as_array().unwrap().len(), 2, "{point}");
        let chunk_objects = |store: &Store| {
            objects(store)
                .into_iter()
                .filter(|o| o.ends_with(".jsonl.zst"))
                .count()
        };
        let unrecorded = usize::from(point.starts_with("archive-renamed"));
        assert_eq!(
            chunk_objects(&store),
            2 + unrecorded,
            "{point}: {:?}",
            objects(&store)
        );
        let (code, report, text) = verify(&target);
        assert_eq!(code, 1, "{point}: a stopped archive passed verify: {text}");
        let codes = finding_codes(&report);
        assert!(
            codes.contains(&"unfinished".to_owned()),
            "{point}: {codes:?}"
        );
        assert_eq!(
            codes.contains(&"chunk_not_listed".to_owned()),
            unrecorded == 1,
            "{point}: {codes:?}"
        );

        // a chunk object no run will write again (the re-run rewrites the unrecorded one
        // under the same name): only the deletion of unlisted chunks removes it
        let stray = "Accounts/r099-c000001.jsonl.zst";
        block_on(store.write(stray, b"stray".to_vec())).unwrap();

        let resumed = succeed(archive(&source_db, &target));
        assert_eq!(resumed["outcome"], "resumed", "{point}");
        assert_eq!(resumed["orphans_removed"], unrecorded + 1, "{point}");
        let after = manifest(&store);
        // the chunks finished before the kill are kept as they were
        assert_eq!(
            after["chunks"].as_array().unwrap()[..2],
            before["chunks"].as_array().unwrap()[..],
            "{point}"
        );
        assert_eq!(archived(&store), in_source, "{point}");
        assert_eq!(
            objects(&store),
            archive_files(&after),
            "{point}: an unrecorded chunk object was left"
        );
        let (code, _, text) = verify(&target);
        assert_eq!(code, 0, "{point}: {text}");

        // restore from it, killed after a chunk's checkpoint, then run again
        let restored_db = format!("{source_db}-{}", point.replace(':', "-"));
        kill_at(restore(&target, &restored_db), "restore-checkpointed:2");
        let finished = succeed(restore(&target, &restored_db));
        assert_eq!(finished["outcome"], "resumed", "{point}: {finished}");
        assert_eq!(finished["matches"], true, "{point}: {finished}");
        assert_eq!(
            without_system(&read_back(&restored_db)),
            without_system(&in_source),
            "{point}: the restored database differs from the source"
        );
    }
}
