//! Rows in PostgreSQL's binary `COPY` format, encoded the way sqlx encodes the same values as
//! bind parameters (so a row copied here equals the row the upsert path writes).
//!
//! Format (PostgreSQL docs, "COPY", binary format): an 11-byte signature, a 32-bit flags field
//! and a 32-bit header-extension length; then per row a 16-bit field count and per field a
//! 32-bit length (-1 for NULL) and the value in the type's binary `send` form; a 16-bit -1 ends
//! the data.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// The oid of `text`: the element type of a `text[]` value.
const TEXT_OID: u32 = 25;

/// One table's rows of a page, as one complete COPY input.
#[derive(Debug)]
pub(crate) struct CopyRows {
    buf: BytesMut,
    rows: u64,
}

impl CopyRows {
    pub(crate) fn new() -> Self {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(SIGNATURE);
        buf.put_u32(0);
        buf.put_u32(0);
        Self { buf, rows: 0 }
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Starts a row of `fields` values; the caller then adds exactly that many.
    pub(crate) fn row(&mut self, fields: i16) -> &mut Self {
        self.rows += 1;
        self.buf.put_i16(fields);
        self
    }

    fn null(&mut self) -> &mut Self {
        self.buf.put_i32(-1);
        self
    }

    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        // a field longer than 2 GiB cannot be a row of ours (jsonb itself stops at 255 MiB)
        self.buf
            .put_i32(i32::try_from(value.len()).unwrap_or(i32::MAX));
        self.buf.put_slice(value);
        self
    }

    pub(crate) fn uuid(&mut self, v: Uuid) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(crate) fn opt_uuid(&mut self, v: Option<Uuid>) -> &mut Self {
        match v {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    pub(crate) fn text(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(crate) fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    /// `jsonb`: a version byte (1), then the JSON text.
    pub(crate) fn jsonb(&mut self, v: &serde_json::Value) -> &mut Self {
        let mut out = vec![1u8];
        // writing a Value into a Vec cannot fail
        serde_json::to_writer(&mut out, v).unwrap_or_default();
        self.bytes(&out)
    }

    /// `timestamptz`: microseconds since 2000-01-01 UTC, as sqlx computes them.
    pub(crate) fn ts(&mut self, v: DateTime<Utc>) -> &mut Self {
        let micros = (v.naive_utc() - postgres_epoch().and_hms_opt(0, 0, 0).unwrap_or_default())
            .num_microseconds()
            .unwrap_or(i64::MAX);
        self.buf.put_i32(8);
        self.buf.put_i64(micros);
        self
    }

    pub(crate) fn opt_ts(&mut self, v: Option<DateTime<Utc>>) -> &mut Self {
        match v {
            Some(v) => self.ts(v),
            None => self.null(),
        }
    }

    /// `date`: days since 2000-01-01.
    pub(crate) fn opt_date(&mut self, v: Option<NaiveDate>) -> &mut Self {
        match v {
            Some(v) => {
                let days = i32::try_from((v - postgres_epoch()).num_days()).unwrap_or(i32::MAX);
                self.buf.put_i32(4);
                self.buf.put_i32(days);
                self
            }
            None => self.null(),
        }
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.put_i32(1);
        self.buf.put_u8(u8::from(v));
        self
    }

    pub(crate) fn f32(&mut self, v: f32) -> &mut Self {
        self.buf.put_i32(4);
        self.buf.put_f32(v);
        self
    }

    pub(crate) fn opt_i16(&mut self, v: Option<i16>) -> &mut Self {
        match v {
            Some(v) => {
                self.buf.put_i32(2);
                self.buf.put_i16(v);
                self
            }
            None => self.null(),
        }
    }

    pub(crate) fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.put_i32(4);
        self.buf.put_i32(v);
        self
    }

    /// `text[]`: one dimension (none when empty), no nulls, lower bound 1.
    pub(crate) fn text_array(&mut self, items: &[String]) -> &mut Self {
        let mut out = BytesMut::new();
        out.put_i32(i32::from(!items.is_empty()));
        out.put_i32(0);
        out.put_u32(TEXT_OID);
        if !items.is_empty() {
            out.put_i32(i32::try_from(items.len()).unwrap_or(i32::MAX));
            out.put_i32(1);
            for item in items {
                out.put_i32(i32::try_from(item.len()).unwrap_or(i32::MAX));
                out.put_slice(item.as_bytes());
            }
        }
        self.bytes(&out)
    }

    /// The complete COPY input: the rows and the trailer.
    pub(crate) fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

fn postgres_epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default()
}
