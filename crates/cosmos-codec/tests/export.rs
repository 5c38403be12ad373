//! Export files: written with a manifest, read back streaming, malformed lines reported with
//! file and line, reading resumable from a checkpoint.
#![allow(clippy::unwrap_used)]

use std::fs;

use mystira_cosmos_codec::export::{
    DocumentReader, ExportDir, ExportError, ExportWriter, Position,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn docs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("doc-{i}"), "Email": "a@example.com", "Nested": {"line\nbreak": i}}))
        .collect()
}

#[test]
fn written_files_match_their_manifest_and_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ExportWriter::create(dir.path()).unwrap();
    let accounts = docs(5);
    for d in &accounts {
        w.write("Accounts", d).unwrap();
    }
    w.write("PendingSignups", &json!({"id": "s"})).unwrap();
    w.add_container("UserProfiles").unwrap();
    let manifest = w.finish().unwrap();

    let entry = &manifest.files["Accounts.jsonl"];
    assert_eq!(entry.lines, 5);
    let bytes = fs::read(dir.path().join("Accounts.jsonl")).unwrap();
    assert_eq!(entry.bytes, bytes.len() as u64);
    let expected: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(entry.sha256, expected);
    assert_eq!(manifest.files["UserProfiles.jsonl"].lines, 0);
    assert_eq!(manifest.files["PendingSignups.jsonl"].lines, 1);

    let export = ExportDir::open(dir.path()).unwrap();
    assert_eq!(export.manifest.as_ref(), Some(&manifest));
    export.verify().unwrap();
    let names: Vec<_> = export.files.iter().map(|f| f.container.as_str()).collect();
    assert_eq!(names, ["Accounts", "PendingSignups", "UserProfiles"]);
    let read: Vec<Value> = export
        .reader(export.file("Accounts").unwrap())
        .unwrap()
        .map(|d| d.unwrap().value)
        .collect();
    assert_eq!(read, accounts);
}

#[test]
fn malformed_lines_are_reported_with_file_and_line_and_reading_continues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Accounts.jsonl");
    fs::write(
        &path,
        "{\"id\":\"a\"}\n{\"id\": \"secret@example.com\", broken\n\n42\n{\"id\":\"b\"}",
    )
    .unwrap();
    let items: Vec<_> = DocumentReader::open(&path, "Accounts").unwrap().collect();
    assert_eq!(items.len(), 4, "{items:?}");
    assert_eq!(items[0].as_ref().unwrap().line_no, 1);
    let bad = items[1].as_ref().unwrap_err();
    assert_eq!(bad.line_no, 2);
    assert!(bad.file.ends_with("Accounts.jsonl"));
    assert!(!bad.message.contains("secret"), "{}", bad.message);
    assert_eq!(
        items[2].as_ref().unwrap_err().line_no,
        4,
        "blank line 3 skipped"
    );
    assert_eq!(items[2].as_ref().unwrap_err().message, "not a JSON object");
    let last = items[3].as_ref().unwrap();
    assert_eq!((last.line_no, last.value["id"].as_str()), (5, Some("b")));
    assert_eq!(last.container, "Accounts");
}

#[test]
fn reading_resumes_from_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ExportWriter::create(dir.path()).unwrap();
    for d in docs(10) {
        w.write("UserProfiles", &d).unwrap();
    }
    w.finish().unwrap();
    let path = dir.path().join("UserProfiles.jsonl");
    let mut reader = DocumentReader::open(&path, "UserProfiles").unwrap();
    let mut checkpoint = Position::START;
    for _ in 0..4 {
        checkpoint = reader.next().unwrap().unwrap().next;
    }
    assert_eq!(reader.position(), checkpoint);
    drop(reader);
    let rest: Vec<_> = DocumentReader::open_at(&path, "UserProfiles", checkpoint)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rest.len(), 6);
    assert_eq!(rest[0].line_no, 5);
    assert_eq!(rest[0].value["id"], "doc-4");
    assert_eq!(rest[0].byte_offset, checkpoint.byte_offset);
    assert_eq!(rest[5].next.byte_offset, fs::metadata(&path).unwrap().len());
}

#[test]
fn a_directory_without_manifest_is_valid_and_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("Accounts.jsonl"), "{\"id\":\"a\"}\n").unwrap();
    fs::write(dir.path().join("notes.txt"), "not an export file").unwrap();
    let export = ExportDir::open(dir.path()).unwrap();
    assert!(export.manifest.is_none());
    assert_eq!(export.files.len(), 1);
    export.verify().unwrap();

    let mut w = ExportWriter::create(dir.path()).unwrap();
    w.write("Accounts", &json!({"id": "a"})).unwrap();
    w.finish().unwrap();
    fs::write(dir.path().join("Accounts.jsonl"), "{\"id\":\"b\"}\n").unwrap();
    let err = ExportDir::open(dir.path()).unwrap().verify().unwrap_err();
    assert!(matches!(err, ExportError::Mismatch { .. }), "{err}");
    fs::remove_file(dir.path().join("Accounts.jsonl")).unwrap();
    assert!(matches!(
        ExportDir::open(dir.path()).unwrap_err(),
        ExportError::Mismatch { .. }
    ));
}

#[test]
fn a_new_writer_removes_a_stale_manifest_and_rejects_unsafe_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = ExportWriter::create(dir.path()).unwrap();
    w.write("Accounts", &json!({"id": "a"})).unwrap();
    w.finish().unwrap();
    let mut w = ExportWriter::create(dir.path()).unwrap();
    assert!(!dir.path().join("manifest.json").exists());
    assert!(matches!(
        w.write("../escape", &json!({})),
        Err(ExportError::InvalidContainerName)
    ));
}

#[test]
fn a_byte_order_mark_at_the_start_of_a_file_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Accounts.jsonl");
    // EF BB BF, then two documents; a BOM-like sequence later on is left alone
    let mut bytes = b"\xEF\xBB\xBF{\"id\":\"a\"}\n".to_vec();
    bytes.extend_from_slice(b"\xEF\xBB\xBF{\"id\":\"b\"}\n");
    fs::write(&path, &bytes).unwrap();
    let items: Vec<_> = DocumentReader::open(&path, "Accounts").unwrap().collect();
    let first = items[0].as_ref().unwrap();
    assert_eq!((first.line_no, first.byte_offset), (1, 0));
    assert_eq!(first.value, json!({"id": "a"}));
    // positions count the mark's bytes: a checkpoint resumes at the true offset
    assert_eq!(first.next.byte_offset, 14);
    assert!(items[1].is_err(), "only the file's start is skipped");

    // the unparsed lines the fast paths read (id probes) do not carry it either
    let mut reader = DocumentReader::open(&path, "Accounts").unwrap();
    assert_eq!(
        reader.next_line().unwrap().unwrap().bytes,
        b"{\"id\":\"a\"}\n"
    );

    // a file holding a BOM and nothing else holds no document
    fs::write(&path, b"\xEF\xBB\xBF\n").unwrap();
    assert_eq!(DocumentReader::open(&path, "Accounts").unwrap().count(), 0);

    // nor does it break a manifest
    let mut w = ExportWriter::create(dir.path()).unwrap();
    w.write("Accounts", &json!({"id": "a"})).unwrap();
    w.finish().unwrap();
    let manifest = dir.path().join("manifest.json");
    let mut text = b"\xEF\xBB\xBF".to_vec();
    text.extend(fs::read(&manifest).unwrap());
    fs::write(&manifest, text).unwrap();
    assert!(ExportDir::open(dir.path()).unwrap().manifest.is_some());
}
