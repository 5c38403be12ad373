//! Chunk files: documents as JSON lines, compressed with zstd (with its frame checksum), and
//! the SHA-256 of the file as written, which the manifest records.

use std::collections::HashSet;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::manifest::ChunkEntry;
use super::store::Store;
use super::{ArchiveError, blocking};

/// zstd's default level: about JSON's size / 6 at hundreds of MB/s; the archive is read far
/// less often than a backup, but written while Cosmos is read, so speed matters more here.
const LEVEL: i32 = 3;

/// A chunk ready to be written.
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub documents: u64,
    pub json_bytes: u64,
    pub sha256: String,
}

/// `documents` as JSON lines, compressed.
pub fn encode(documents: &[Value]) -> std::io::Result<Encoded> {
    let mut json = Vec::with_capacity(documents.len() * 512);
    for doc in documents {
        serde_json::to_writer(&mut json, doc)?;
        json.push(b'\n');
    }
    let mut encoder = zstd::stream::Encoder::new(Vec::with_capacity(json.len() / 4), LEVEL)?;
    // a damaged frame then fails to decompress even where the manifest is damaged too
    encoder.include_checksum(true)?;
    std::io::Write::write_all(&mut encoder, &json)?;
    let bytes = encoder.finish()?;
    Ok(Encoded {
        sha256: sha256_hex(&bytes),
        documents: documents.len() as u64,
        json_bytes: json.len() as u64,
        bytes,
    })
}

/// SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What is wrong with a chunk, as a finding's code and a sentence (never document values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkProblem {
    pub code: &'static str,
    pub message: String,
}

impl ChunkProblem {
    fn new(code: &'static str, message: String) -> Self {
        Self { code, message }
    }
}

/// Reads chunk `entry` from `store` and checks it ([`check`], on a blocking thread). Returns
/// the documents.
pub async fn read_checked(store: &Store, entry: &ChunkEntry) -> Result<Vec<Value>, ChunkProblem> {
    let bytes = match store.read(&entry.file).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(ChunkProblem::new(
                "chunk_missing",
                "listed in the manifest but not in the archive".into(),
            ));
        }
        Err(e) => {
            return Err(ChunkProblem::new(
                "chunk_unreadable",
                format!("cannot be read: {e}"),
            ));
        }
    };
    let entry = entry.clone();
    blocking(move || check(&bytes, &entry))
        .await
        .unwrap_or_else(|e| Err(ChunkProblem::new("chunk_unreadable", e.to_string())))
}

/// [`read_checked`] as an archive error (a damaged chunk names itself).
pub async fn read_or_fail(store: &Store, entry: &ChunkEntry) -> Result<Vec<Value>, ArchiveError> {
    read_checked(store, entry)
        .await
        .map_err(|p| ArchiveError::Damaged {
            file: entry.file.clone(),
            code: p.code,
            message: p.message,
        })
}

/// Checks a chunk's bytes against the manifest: its size, its SHA-256, that it decompresses,
/// that every line is a JSON object with an `id`, and that it holds as many documents as
/// recorded. Returns the documents.
pub fn check(bytes: &[u8], entry: &ChunkEntry) -> Result<Vec<Value>, ChunkProblem> {
    if bytes.len() as u64 != entry.bytes {
        return Err(ChunkProblem::new(
            "chunk_size_differs",
            format!(
                "is {} bytes, the manifest says {}",
                bytes.len(),
                entry.bytes
            ),
        ));
    }
    let sha = sha256_hex(bytes);
    if sha != entry.sha256 {
        return Err(ChunkProblem::new(
            "chunk_hash_differs",
            format!(
                "SHA-256 is {sha}, the manifest says {} (the file was changed or damaged)",
                entry.sha256
            ),
        ));
    }
    let json = zstd::stream::decode_all(bytes)
        .map_err(|e| ChunkProblem::new("chunk_unreadable", format!("does not decompress: {e}")))?;
    let mut documents = Vec::with_capacity(entry.documents as usize);
    for (i, line) in json.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let doc: Value = serde_json::from_slice(line).map_err(|e| {
            ChunkProblem::new(
                "chunk_unreadable",
                format!("line {} is not JSON: {e}", i + 1),
            )
        })?;
        if doc.get("id").and_then(Value::as_str).is_none() {
            return Err(ChunkProblem::new(
                "chunk_unreadable",
                format!("line {} is not a document with an id", i + 1),
            ));
        }
        documents.push(doc);
    }
    if documents.len() as u64 != entry.documents {
        return Err(ChunkProblem::new(
            "chunk_documents_differ",
            format!(
                "holds {} documents, the manifest says {}",
                documents.len(),
                entry.documents
            ),
        ));
    }
    Ok(documents)
}

/// The value at a single-path partition key such as `/email` (`None` when absent or not a
/// string, number or boolean).
pub fn partition_value(doc: &Value, path: &str) -> Option<String> {
    let mut value = doc;
    for part in path.trim_start_matches('/').split('/') {
        value = value.get(part)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A document's identity in its container: Cosmos keeps ids unique per partition-key value,
/// so the pair is the key. Hashed to 128 bits, so counting the distinct documents of a large
/// container needs 16 bytes per document.
pub fn identity(doc: &Value, partition_key: &str) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(partition_value(doc, partition_key).unwrap_or_default());
    hasher.update([0]);
    hasher.update(doc.get("id").and_then(Value::as_str).unwrap_or_default());
    let digest = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// Counts distinct documents across chunks.
#[derive(Debug, Default)]
pub struct DistinctCounter {
    seen: HashSet<u128>,
}

impl DistinctCounter {
    pub fn add(&mut self, documents: &[Value], partition_key: &str) {
        self.seen
            .extend(documents.iter().map(|d| identity(d, partition_key)));
    }

    pub fn count(&self) -> u64 {
        self.seen.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(encoded: &Encoded) -> ChunkEntry {
        ChunkEntry {
            file: "c.jsonl.zst".into(),
            container: "Accounts".into(),
            range: 0,
            documents: encoded.documents,
            bytes: encoded.bytes.len() as u64,
            json_bytes: encoded.json_bytes,
            sha256: encoded.sha256.clone(),
        }
    }

    #[test]
    fn a_chunk_reads_back_as_written_and_any_flipped_byte_is_caught() {
        let docs: Vec<Value> = (0..20)
            .map(|i| serde_json::json!({"id": format!("d{i}"), "_ts": i, "n": [i, i]}))
            .collect();
        let encoded = encode(&docs).expect("encode");
        assert_eq!(check(&encoded.bytes, &entry(&encoded)), Ok(docs));
        for at in [0, encoded.bytes.len() / 2, encoded.bytes.len() - 1] {
            let mut bytes = encoded.bytes.clone();
            bytes[at] ^= 0x01;
            let problem = check(&bytes, &entry(&encoded)).expect_err("damaged");
            assert_eq!(problem.code, "chunk_hash_differs", "byte {at}");
        }
    }

    #[test]
    fn identity_is_the_partition_value_and_the_id() {
        let a = serde_json::json!({"id": "1", "email": "a@x"});
        let b = serde_json::json!({"id": "1", "email": "b@x", "_ts": 5});
        let a2 = serde_json::json!({"id": "1", "email": "a@x", "_ts": 9});
        assert_ne!(identity(&a, "/email"), identity(&b, "/email"));
        assert_eq!(identity(&a, "/email"), identity(&a2, "/email"));
        assert_eq!(identity(&a, "/id"), identity(&b, "/id"));
    }
}
