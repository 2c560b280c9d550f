//! Feature store: ingestion, content addressing, verification and tampering, lineage, bad inputs
//! (with the catalog left unchanged), concurrent writers, diff, point-in-time joins checked
//! against hand-computed results, and the same store on object storage (in memory and through a
//! `file://` URL: the code path S3, GCS and Azure take).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float64Type, Int64Type};
use nereid_pipeline::join::{build_training_set, point_in_time_join, FeatureView, JoinSpec};
use nereid_pipeline::location::{Location, ObjectLocation};
use nereid_pipeline::profile::diff_profiles;
use nereid_pipeline::store::{Derivation, FeatureStore, IngestOptions, SchemaSpec, StoreError};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write fixture");
    path
}

/// Every file under `root` with its contents: the store's complete state.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.insert(
                    path.strip_prefix(root).expect("prefix").to_path_buf(),
                    Vec::new(),
                );
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("prefix").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

const CUSTOMERS: &str = "\
customer_id,age,city,spend
1,34,Lyon,120.5
2,51,Paris,80.0
3,,Lyon,42.25
4,29,Nice,300.0
";

#[test]
fn ingest_version_verify_then_tampering_is_detected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = write(tmp.path(), "customers.csv", CUSTOMERS);
    let store = FeatureStore::open_or_create(tmp.path().join("store")).expect("store");

    let c = store
        .ingest(&csv, &IngestOptions::new("customers"))
        .expect("ingest");
    assert!(c.new_content && c.new_index_entry);
    assert_eq!(c.seq, 1);
    let v = &c.version;
    assert_eq!(v.rows, 4);
    assert_eq!(v.id.len(), 64);
    let types: Vec<(&str, &str)> = v
        .schema
        .iter()
        .map(|c| (c.name.as_str(), c.data_type.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("customer_id", "Int64"),
            ("age", "Int64"),
            ("city", "Utf8"),
            ("spend", "Float64")
        ]
    );
    assert!(matches!(v.derivation, Derivation::Ingest { .. }));
    // The statistics profile: counts, nulls, numeric stats, categories.
    let age = &v.profile.columns[1];
    assert_eq!((age.count, age.nulls), (3, 1));
    let age_stats = age.numeric.as_ref().expect("numeric");
    assert_eq!((age_stats.min, age_stats.max), (Some(29.0), Some(51.0)));
    assert!((age_stats.mean.expect("mean") - 38.0).abs() < 1e-12);
    assert_eq!(age_stats.histogram.counts.iter().sum::<u64>(), 3);
    let city = v.profile.columns[2]
        .categorical
        .as_ref()
        .expect("categorical");
    assert_eq!(city.frequencies[0], ("Lyon".to_string(), 2));

    // Reading back gives the data.
    let batch = store.read(v).expect("read");
    assert_eq!(batch.num_rows(), 4);
    let spend = batch.column(3).as_primitive::<Float64Type>();
    assert_eq!(spend.value(2), 42.25);

    // Verify passes, for one version and for the whole store.
    let report = store.verify(v);
    assert!(report.ok, "{:?}", report.problems);
    assert!(store.verify_all().expect("verify all").iter().all(|r| r.ok));

    // Re-ingesting the same file changes nothing.
    let before = snapshot(store.local_root().expect("a local store"));
    let again = store
        .ingest(&csv, &IngestOptions::new("customers"))
        .expect("re-ingest");
    assert_eq!(again.version.id, v.id);
    assert!(!again.new_content && !again.new_index_entry);
    assert_eq!(snapshot(store.local_root().expect("a local store")), before);

    // New content becomes a new version; the old one is untouched.
    let csv2 = write(
        tmp.path(),
        "customers2.csv",
        &format!("{CUSTOMERS}5,40,Paris,10.0\n"),
    );
    let c2 = store
        .ingest(&csv2, &IngestOptions::new("customers"))
        .expect("second version");
    assert_ne!(c2.version.id, v.id);
    assert_eq!(c2.seq, 2);
    assert_eq!(
        store.resolve("customers").expect("latest").id,
        c2.version.id
    );
    assert_eq!(store.resolve("customers@1").expect("@1").id, v.id);
    assert_eq!(store.resolve(&v.id[..10]).expect("prefix").id, v.id);
    assert_eq!(
        store
            .resolve(&format!("customers@{}", &v.id[..8]))
            .expect("name@id")
            .id,
        v.id
    );
    assert!(matches!(
        store.resolve("customers@9"),
        Err(StoreError::NotFound(_))
    ));
    assert!(store.verify(&store.resolve("customers@1").expect("@1")).ok);

    // Tampering with the data file is caught.
    let data = store
        .local_root()
        .expect("a local store")
        .join("objects")
        .join(&v.id)
        .join("data.parquet");
    let mut bytes = std::fs::read(&data).expect("read data");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).expect("tamper");
    let report = store.verify(v);
    assert!(!report.ok);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("sha256") && p.contains("modified")),
        "{:?}",
        report.problems
    );
    let all = store.verify_all().expect("verify all");
    assert_eq!(all.iter().filter(|r| !r.ok).count(), 1, "{all:?}");

    // Tampering with the catalog entry's statistics is caught too.
    let entry_path = store
        .local_root()
        .expect("a local store")
        .join("versions")
        .join(format!("{}.json", c2.version.id));
    let text = std::fs::read_to_string(&entry_path).expect("entry");
    let mut entry: serde_json::Value = serde_json::from_str(&text).expect("json");
    entry["profile"]["columns"][3]["numeric"]["mean"] = serde_json::json!(1e9);
    std::fs::write(&entry_path, serde_json::to_vec(&entry).expect("json")).expect("tamper entry");
    let report = store.verify(&store.get(&c2.version.id).expect("get"));
    assert!(
        report.problems.iter().any(|p| p.contains("profile")),
        "{:?}",
        report.problems
    );
    // Ingesting identical content on top of damaged files refuses to build on them.
    let err = store
        .ingest(&csv, &IngestOptions::new("customers"))
        .expect_err("corrupt object");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
}

#[test]
fn ids_and_lineage_are_stable_across_stores_and_formats() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = write(tmp.path(), "customers.csv", CUSTOMERS);
    let a = FeatureStore::open_or_create(tmp.path().join("a")).expect("a");
    let b = FeatureStore::open_or_create(tmp.path().join("b")).expect("b");
    let va = a
        .ingest(&csv, &IngestOptions::new("customers"))
        .expect("a")
        .version;
    let vb = b
        .ingest(&csv, &IngestOptions::new("other_name"))
        .expect("b")
        .version;
    // Content-addressed: same data, same id, whatever the store, name or time.
    assert_eq!(va.id, vb.id);
    assert_eq!(va.profile, vb.profile);

    // The same rows as JSON lines (with an explicit schema matching the CSV's inference) and
    // as Parquet give the same id: the id is over the stored Parquet, not the source bytes.
    let jsonl = write(
        tmp.path(),
        "customers.jsonl",
        "{\"customer_id\":1,\"age\":34,\"city\":\"Lyon\",\"spend\":120.5}\n\
         {\"customer_id\":2,\"age\":51,\"city\":\"Paris\",\"spend\":80.0}\n\
         {\"customer_id\":3,\"age\":null,\"city\":\"Lyon\",\"spend\":42.25}\n\
         {\"customer_id\":4,\"age\":29,\"city\":\"Nice\",\"spend\":300.0}\n",
    );
    let mut opts = IngestOptions::new("customers_json");
    opts.schema = Some(
        SchemaSpec::parse(&["customer_id:int64,age:int64,city:utf8,spend:float64"])
            .expect("schema"),
    );
    let vj = a.ingest(&jsonl, &opts).expect("jsonl").version;
    assert_eq!(vj.id, va.id);
    let parquet = a
        .local_root()
        .expect("a local store")
        .join("objects")
        .join(&va.id)
        .join("data.parquet");
    let copy = tmp.path().join("copy.parquet");
    std::fs::copy(&parquet, &copy).expect("copy");
    let vp = b
        .ingest(&copy, &IngestOptions::new("from_parquet"))
        .expect("parquet")
        .version;
    assert_eq!(vp.id, va.id);

    // Derived versions: parents recorded, ids stable across stores.
    let labels = write(
        tmp.path(),
        "labels.csv",
        "customer_id,timestamp,churned\n1,2024-01-10T00:00:00,0\n2,2024-01-10T00:00:00,1\n",
    );
    let features = write(
        tmp.path(),
        "features.csv",
        "customer_id,timestamp,visits\n1,2024-01-01T00:00:00,3\n2,2024-01-05T00:00:00,7\n",
    );
    let mut ids = Vec::new();
    for store in [&a, &b] {
        let l = store
            .ingest(&labels, &IngestOptions::new("labels"))
            .expect("labels")
            .version;
        let f = store
            .ingest(&features, &IngestOptions::new("visits"))
            .expect("features")
            .version;
        let spec = JoinSpec {
            labels: "labels".into(),
            label_timestamp: "timestamp".into(),
            views: vec![FeatureView {
                name: "visits".into(),
                source: "visits".into(),
                entities: vec!["customer_id".into()],
                timestamp: "timestamp".into(),
                created_timestamp: None,
                features: vec!["visits".into()],
                ttl: None,
                prefix: false,
            }],
        };
        let (c, _) = build_training_set(store, &spec, "train_set", "churn").expect("join");
        assert_eq!(c.version.parents, vec![l.id.clone(), f.id.clone()]);
        match &c.version.derivation {
            Derivation::Join { spec } => {
                assert_eq!(
                    spec["labels"],
                    serde_json::json!(l.id),
                    "references are resolved"
                );
            }
            other => panic!("derivation {other:?}"),
        }
        assert!(store.verify(&c.version).ok);
        ids.push(c.version.id);
    }
    assert_eq!(ids[0], ids[1]);
}

#[test]
fn bad_inputs_fail_clearly_and_leave_the_catalog_unchanged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FeatureStore::open_or_create(tmp.path().join("store")).expect("store");
    let good = write(tmp.path(), "good.csv", CUSTOMERS);
    store
        .ingest(&good, &IngestOptions::new("customers"))
        .expect("good");
    let before = snapshot(store.local_root().expect("a local store"));

    let check = |file: &str, text: &str, opts: IngestOptions, expect: &[&str]| {
        let path = write(tmp.path(), file, text);
        let err = store.ingest(&path, &opts).expect_err(file);
        let msg = err.to_string();
        for e in expect {
            assert!(msg.contains(e), "{file}: `{msg}` should mention `{e}`");
        }
        assert_eq!(
            snapshot(store.local_root().expect("a local store")),
            before,
            "{file} changed the store"
        );
        println!("{file}: {msg}");
        msg
    };

    // A row with a missing field.
    let msg = check(
        "ragged.csv",
        "a,b,c\n1,2,3\n4,5\n6,7,8\n",
        IngestOptions::new("ragged"),
        &["ragged.csv"],
    );
    assert!(msg.contains("line") || msg.contains("record"), "{msg}");
    // A value that does not parse as the column's (given) type.
    let mut opts = IngestOptions::new("typed");
    opts.schema = Some(SchemaSpec::parse(&["a:int64,b:float64"]).expect("schema"));
    check(
        "bad_value.csv",
        "a,b\n1,2.5\n2,oops\n",
        opts,
        &["bad_value.csv", "oops"],
    );
    // Wrong schema: the file's columns are not the schema's.
    let mut opts = IngestOptions::new("wrong");
    opts.schema = Some(SchemaSpec::parse(&["a:int64,b:float64,c:utf8"]).expect("schema"));
    check(
        "wrong_schema.csv",
        "a,x\n1,2\n",
        opts,
        &[
            "does not match the expected schema",
            "missing column `b`",
            "missing column `c`",
            "unexpected column `x`",
        ],
    );
    // Missing columns in JSON lines with an explicit schema that forbids unknown fields.
    let mut opts = IngestOptions::new("json");
    opts.schema = Some(SchemaSpec::parse(&["a:int64"]).expect("schema"));
    check(
        "extra.jsonl",
        "{\"a\":1,\"zzz\":2}\n",
        opts,
        &["extra.jsonl", "zzz"],
    );
    // Empty datasets: only a header, and nothing at all.
    check(
        "header_only.csv",
        "a,b\n",
        IngestOptions::new("empty"),
        &["no rows"],
    );
    check(
        "empty.jsonl",
        "",
        IngestOptions::new("empty"),
        &["empty.jsonl", "no rows"],
    );
    // Duplicate column names.
    check(
        "dup.csv",
        "a,a\n1,2\n",
        IngestOptions::new("dup"),
        &["appears twice"],
    );
    // Unknown format, bad dataset name.
    check(
        "data.txt",
        "a\n1\n",
        IngestOptions::new("txt"),
        &["cannot tell the format"],
    );
    check(
        "ok.csv",
        "a\n1\n",
        IngestOptions::new("../escape"),
        &["invalid dataset name"],
    );
    // Malformed JSON.
    check(
        "broken.jsonl",
        "{\"a\": 1}\n{\"a\": \n",
        IngestOptions::new("broken"),
        &["broken.jsonl"],
    );
    // Bad schema text is refused before any file is read.
    assert!(SchemaSpec::parse(&["a:int64,a:utf8"]).is_err());
    assert!(SchemaSpec::parse(&["a:notatype"]).is_err());
    assert!(SchemaSpec::parse(&["noname"]).is_err());
    // The good version is still intact and verifiable.
    assert!(store.verify_all().expect("verify").iter().all(|r| r.ok));
    // A directory that is not a store is not silently treated as one.
    assert!(matches!(
        FeatureStore::open(tmp.path()),
        Err(StoreError::NotAStore(_))
    ));
}

#[test]
fn concurrent_writers_keep_the_catalog_consistent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("store");
    FeatureStore::open_or_create(&root).expect("store");
    let mut files = Vec::new();
    for i in 0..6 {
        // Threads 0..3 write distinct content, 3..6 repeat content 0..3 (deduplicated).
        let text = format!("k,v\n{},{}\n", i % 3, (i % 3) * 10);
        files.push(write(tmp.path(), &format!("f{i}.csv"), &text));
    }
    let handles: Vec<_> = files
        .into_iter()
        .map(|f| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = FeatureStore::open(&root).expect("open");
                store
                    .ingest(&f, &IngestOptions::new("shared"))
                    .expect("ingest")
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let store = FeatureStore::open(&root).expect("open");
    let history = store.history("shared").expect("history");
    // Sequence numbers are unique and dense; every entry points at a stored, valid version.
    let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>());
    let distinct: std::collections::BTreeSet<&str> =
        results.iter().map(|c| c.version.id.as_str()).collect();
    assert_eq!(distinct.len(), 3);
    assert_eq!(store.all_versions().expect("versions").len(), 3);
    assert!(store.verify_all().expect("verify").iter().all(|r| r.ok));
    // No staging leftovers.
    let leftovers: Vec<_> = std::fs::read_dir(root.join("objects"))
        .expect("objects")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

/// Overwrites a version's data file behind the store's back: `tamper(id, bytes)`.
type Tamper = Box<dyn Fn(&str, &'static [u8])>;

/// Two object locations: a prefix of an in-memory store, and a `file://` URL (object_store's
/// LocalFileSystem), each with its [`Tamper`].
fn object_locations(dir: &Path) -> Vec<(Location, Tamper)> {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let in_memory = Location::Object(ObjectLocation {
        store: memory.clone(),
        prefix: object_store::path::Path::from("team/features"),
        url: "memory://team/features".into(),
        local_dir: None,
    });
    let tamper_memory = move |id: &str, bytes: &'static [u8]| {
        use object_store::ObjectStoreExt;
        let path =
            object_store::path::Path::from(format!("team/features/objects/{id}/data.parquet"));
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(memory.put(&path, bytes.into()))
            .expect("overwrite");
    };
    let file_dir = dir.join("bucket");
    let file_url = Location::parse(&format!("file://{}", file_dir.display())).expect("file URL");
    let tamper_file = move |id: &str, bytes: &'static [u8]| {
        std::fs::write(
            file_dir.join("objects").join(id).join("data.parquet"),
            bytes,
        )
        .expect("overwrite");
    };
    vec![
        (in_memory, Box::new(tamper_memory)),
        (file_url, Box::new(tamper_file)),
    ]
}

#[test]
fn the_store_works_the_same_on_object_storage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = write(tmp.path(), "customers.csv", CUSTOMERS);
    let csv2 = write(
        tmp.path(),
        "customers2.csv",
        &format!("{CUSTOMERS}5,40,Paris,10.0\n"),
    );
    // The local store's ids: content addressing does not depend on where the store is.
    let local = FeatureStore::open_or_create(tmp.path().join("local")).expect("local");
    let local_id = local
        .ingest(&csv, &IngestOptions::new("customers"))
        .expect("local ingest")
        .version
        .id;

    for (location, tamper) in object_locations(tmp.path()) {
        let name = location.to_string();
        assert!(
            matches!(
                FeatureStore::open_location(location.clone()),
                Err(StoreError::NotAStore(_))
            ),
            "{name}"
        );
        let store = FeatureStore::open_or_create_location(location.clone()).expect("create");
        assert_eq!(store.location(), name);
        assert!(store.local_root().is_none());

        let c = store
            .ingest(&csv, &IngestOptions::new("customers"))
            .expect("ingest");
        assert!(c.new_content && c.new_index_entry, "{name}");
        assert_eq!((c.seq, c.version.rows), (1, 4), "{name}");
        assert_eq!(c.version.id, local_id, "{name}");
        let again = store
            .ingest(&csv, &IngestOptions::new("customers"))
            .expect("re-ingest");
        assert!(!again.new_content && !again.new_index_entry, "{name}");
        let c2 = store
            .ingest(
                &csv2,
                &IngestOptions {
                    parents: vec![c.version.id.clone()],
                    ..IngestOptions::new("customers")
                },
            )
            .expect("second version");
        assert_eq!(c2.seq, 2, "{name}");

        // Another handle (another process) sees the same catalog.
        let other = FeatureStore::open_location(location.clone()).expect("open");
        assert_eq!(other.datasets().expect("datasets"), ["customers"]);
        assert_eq!(other.history("customers").expect("history").len(), 2);
        assert_eq!(other.resolve("customers@1").expect("@1").id, c.version.id);
        let latest = other.resolve("customers").expect("latest");
        assert_eq!(latest.parents, std::slice::from_ref(&c.version.id));
        assert_eq!(other.read(&latest).expect("read").num_rows(), 5);
        assert_eq!(other.all_versions().expect("all").len(), 2);
        assert!(
            other.verify_all().expect("verify").iter().all(|r| r.ok),
            "{name}"
        );

        // Concurrent writers of one dataset: unique, dense sequence numbers.
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let location = location.clone();
                let f = write(
                    tmp.path(),
                    &format!("c{i}.csv"),
                    &format!("k,v\n{i},{}\n", i * 10),
                );
                std::thread::spawn(move || {
                    FeatureStore::open_location(location)
                        .expect("open")
                        .ingest(&f, &IngestOptions::new("events"))
                        .expect("ingest")
                        .seq
                })
            })
            .collect();
        let mut seqs: Vec<u64> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2, 3, 4], "{name}");

        // Tampering with the stored data is found by verify, and never silently reused.
        tamper(&c.version.id, b"not parquet");
        let report = store.verify(&c.version);
        assert!(!report.ok, "{name}");
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("modified after it was stored")),
            "{name}: {:?}",
            report.problems
        );
        let err = store
            .ingest(&csv, &IngestOptions::new("customers"))
            .expect_err("re-ingest over damaged data");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{name}: {err}");
    }
}

#[test]
fn diff_reports_schema_and_statistics_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FeatureStore::open_or_create(tmp.path().join("store")).expect("store");
    let a = write(tmp.path(), "a.csv", "x,c,gone\n1.0,u,1\n2.0,u,1\n3.0,v,1\n");
    let b = write(tmp.path(), "b.csv", "x,c,new\n10.0,u,1\n20.0,w,1\n,w,1\n");
    let va = store
        .ingest(&a, &IngestOptions::new("d"))
        .expect("a")
        .version;
    let vb = store
        .ingest(&b, &IngestOptions::new("d"))
        .expect("b")
        .version;
    let d = diff_profiles(&va.profile, &vb.profile);
    assert_eq!(d.added, ["new"]);
    assert_eq!(d.removed, ["gone"]);
    let x = d.columns.iter().find(|c| c.name == "x").expect("x");
    assert_eq!(x.mean, Some((2.0, 15.0)));
    assert!((x.null_fraction.1 - 1.0 / 3.0).abs() < 1e-12);
    assert!(x.mean_shift_std.expect("shift") > 10.0);
    let c = d.columns.iter().find(|c| c.name == "c").expect("c");
    assert_eq!(c.new_categories, ["w"]);
    assert_eq!(c.missing_categories, ["v"]);
}

// ---- point-in-time joins ----------------------------------------------------------------------

fn ints(values: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn floats(values: &[f64]) -> ArrayRef {
    Arc::new(Float64Array::from(values.to_vec()))
}

fn view(ttl: Option<&str>, created: Option<&str>) -> FeatureView {
    FeatureView {
        name: "stats".into(),
        source: "stats".into(),
        entities: vec!["user".into()],
        timestamp: "event_time".into(),
        created_timestamp: created.map(str::to_string),
        features: vec!["score".into()],
        ttl: ttl.map(str::to_string),
        prefix: false,
    }
}

/// Feature rows (times in seconds) for users `a` and `b`, deliberately out of time order in the
/// file (row 3 is a late-arriving older value, row 4 a value from the labels' future), plus a
/// `created` column saying when each row became available.
fn feature_table() -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("user", strings(&["a", "a", "b", "a", "a", "b"])),
        (
            "event_time",
            ints(&[
                Some(100),
                Some(200),
                Some(150),
                Some(120),
                Some(1000),
                Some(300),
            ]),
        ),
        (
            "created",
            ints(&[
                Some(100),
                Some(200),
                Some(150),
                Some(500),
                Some(1000),
                Some(300),
            ]),
        ),
        ("score", floats(&[1.0, 2.0, 10.0, 1.5, 99.0, 20.0])),
    ])
    .expect("features")
}

fn label_table() -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("user", strings(&["a", "a", "a", "b", "b", "c", "a", "a"])),
        (
            "ts",
            ints(&[
                Some(99),
                Some(100),
                Some(130),
                Some(160),
                Some(400),
                Some(500),
                None,
                Some(600),
            ]),
        ),
        (
            "label",
            ints(&[
                Some(0),
                Some(1),
                Some(0),
                Some(1),
                Some(0),
                Some(1),
                Some(0),
                Some(1),
            ]),
        ),
    ])
    .expect("labels")
}

fn scores(batch: &RecordBatch) -> Vec<Option<f64>> {
    let col = batch.column_by_name("score").expect("score column");
    let col = col.as_primitive::<Float64Type>();
    (0..col.len())
        .map(|i| col.is_valid(i).then(|| col.value(i)))
        .collect()
}

#[test]
fn point_in_time_join_matches_the_hand_computed_result() {
    let labels = label_table();
    let (out, reports) =
        point_in_time_join(&labels, "ts", &[(view(None, None), feature_table())]).expect("join");
    // Label row by label row (latest feature row with event_time <= ts, per user):
    //   a@99  -> nothing yet (first row is at 100)            -> null
    //   a@100 -> row 0 (event 100 <= 100, inclusive)          -> 1.0
    //   a@130 -> rows at 100, 120 (late arrival, no created)  -> 1.5
    //   b@160 -> row at 150                                   -> 10.0
    //   b@400 -> row at 300                                   -> 20.0
    //   c@500 -> unknown entity                               -> null
    //   a@null-> no time                                      -> null
    //   a@600 -> row at 200 (row at 1000 is in its future)    -> 2.0
    assert_eq!(
        scores(&out),
        [
            None,
            Some(1.0),
            Some(1.5),
            Some(10.0),
            Some(20.0),
            None,
            None,
            Some(2.0)
        ]
    );
    // Label columns are carried through unchanged, in order.
    assert_eq!(out.num_columns(), 4);
    let label = out
        .column_by_name("label")
        .expect("label")
        .as_primitive::<Int64Type>();
    assert_eq!(label.values().to_vec(), vec![0, 1, 0, 1, 0, 1, 0, 1]);
    assert_eq!(
        (reports[0].matched, reports[0].unmatched, reports[0].expired),
        (5, 3, 0)
    );

    // With created times, the late-arriving row (event 120, available at 500) is not used at 130:
    // a@130 falls back to the row at 100. At 600 it is available but older than the row at 200.
    let (out, _) = point_in_time_join(
        &labels,
        "ts",
        &[(view(None, Some("created")), feature_table())],
    )
    .expect("join with created");
    assert_eq!(
        scores(&out),
        [
            None,
            Some(1.0),
            Some(1.0),
            Some(10.0),
            Some(20.0),
            None,
            None,
            Some(2.0)
        ]
    );

    // TTL 60 s: a@130 uses the row at 120 (10 s old), b@160 the row at 150 (10 s), b@400 the row
    // at 300 is 100 s old -> expired; a@600 the row at 200 is 400 s old -> expired.
    let (out, reports) =
        point_in_time_join(&labels, "ts", &[(view(Some("60s"), None), feature_table())])
            .expect("ttl");
    assert_eq!(
        scores(&out),
        [
            None,
            Some(1.0),
            Some(1.5),
            Some(10.0),
            None,
            None,
            None,
            None
        ]
    );
    assert_eq!(
        (reports[0].matched, reports[0].unmatched, reports[0].expired),
        (3, 3, 2)
    );
}

#[test]
fn join_handles_timestamps_multiple_keys_and_rejects_bad_specs() {
    // Two key columns and real timestamps (parsed from CSV), features named by prefix.
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = FeatureStore::open_or_create(tmp.path().join("store")).expect("store");
    let labels = write(
        tmp.path(),
        "labels.csv",
        "shop,item,ts,sold\n\
         s1,i1,2024-03-02T00:00:00,1\n\
         s1,i2,2024-03-02T00:00:00,0\n\
         s2,i1,2024-03-10T12:00:00,1\n",
    );
    let features = write(
        tmp.path(),
        "prices.csv",
        "shop,item,ts,price\n\
         s1,i1,2024-03-01T00:00:00,9.5\n\
         s1,i1,2024-03-03T00:00:00,8.0\n\
         s2,i1,2024-03-01T00:00:00,7.0\n\
         s1,i2,2024-03-05T00:00:00,3.0\n",
    );
    store
        .ingest(&labels, &IngestOptions::new("sales"))
        .expect("labels");
    store
        .ingest(&features, &IngestOptions::new("prices"))
        .expect("prices");
    let spec = JoinSpec {
        labels: "sales".into(),
        label_timestamp: "ts".into(),
        views: vec![FeatureView {
            name: "p".into(),
            source: "prices".into(),
            entities: vec!["shop".into(), "item".into()],
            timestamp: "ts".into(),
            created_timestamp: None,
            features: Vec::new(),
            ttl: Some("7d".into()),
            prefix: true,
        }],
    };
    let (c, reports) = build_training_set(&store, &spec, "sales_train", "").expect("join");
    let out = store.read(&c.version).expect("read");
    let price = out
        .column_by_name("p__price")
        .expect("prefixed")
        .as_primitive::<Float64Type>();
    // s1/i1 at 03-02 -> 9.5 (the 03-03 price is in the future); s1/i2 -> no price before 03-05;
    // s2/i1 at 03-10 12:00 -> the 03-01 price is 9.5 days old, beyond the 7-day TTL.
    assert!(price.is_valid(0));
    assert_eq!(price.value(0), 9.5);
    assert!(price.is_null(1) && price.is_null(2));
    assert_eq!(
        (reports[0].matched, reports[0].unmatched, reports[0].expired),
        (1, 1, 1)
    );

    // Errors name what is wrong.
    let mut bad = spec.clone();
    bad.views[0].entities = vec!["store".into()];
    let err = build_training_set(&store, &bad, "x", "").expect_err("missing key");
    assert!(err.to_string().contains("no column `store`"), "{err}");
    let mut bad = spec.clone();
    bad.views[0].prefix = false;
    bad.views[0].features = vec!["sold".into()];
    let err = build_training_set(&store, &bad, "x", "").expect_err("unknown feature");
    assert!(err.to_string().contains("`sold`"), "{err}");
    let mut bad = spec.clone();
    bad.views[0].ttl = Some("a while".into());
    let err = build_training_set(&store, &bad, "x", "").expect_err("ttl");
    assert!(err.to_string().contains("invalid duration"), "{err}");
    let mut bad = spec;
    bad.label_timestamp = "sold_at".into();
    let err = build_training_set(&store, &bad, "x", "").expect_err("label time");
    assert!(err.to_string().contains("sold_at"), "{err}");
    assert!(store.history("x").expect("history").is_empty());
}
