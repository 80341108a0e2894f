use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

const FP: &str = "0123456789abcdef";

fn offsets(ranges: &DeliveredRanges) -> BTreeSet<i64> {
    ranges.ranges().iter().flat_map(|&(s, e)| s..e).collect()
}

#[test]
fn ranges_merge_and_answer_membership() {
    let r = DeliveredRanges::from_ranges([(10, 12), (5, 7), (7, 8), (20, 20), (11, 15)]);
    assert_eq!(r.ranges(), &[(5, 8), (10, 15)]);
    assert_eq!(r.count(), 8);
    for (offset, expected) in [
        (4, false),
        (5, true),
        (7, true),
        (8, false),
        (14, true),
        (15, false),
    ] {
        assert_eq!(r.contains(offset), expected, "{offset}");
    }
    assert_eq!(r.above(6).collect::<Vec<_>>(), vec![(7, 8), (10, 15)]);
    assert_eq!(r.above(7).collect::<Vec<_>>(), vec![(10, 15)]);
    assert!(DeliveredRanges::default().above(0).next().is_none());
}

#[test]
fn a_commit_round_trips_its_runs() {
    let delivered = [(101, 105), (107, 108), (1_000_000, 1_000_500)];
    let text = encode(FP, 100, delivered, DEFAULT_MAX_BYTES).unwrap();
    assert!(
        text.starts_with("doka1:0123456789abcdef:100:3:r:"),
        "{text}"
    );
    let back = decode(text.as_bytes(), FP, 100).unwrap();
    assert_eq!(back.ranges(), &delivered);
}

#[test]
fn nothing_above_the_commit_is_no_metadata() {
    assert_eq!(encode(FP, 100, [], DEFAULT_MAX_BYTES), None);
    // Too small a limit for even the header.
    assert_eq!(encode(FP, 100, [(101, 102)], 10), None);
}

#[test]
fn metadata_for_anything_else_skips_nothing() {
    let text = encode(FP, 100, [(101, 105)], DEFAULT_MAX_BYTES).unwrap();
    assert_eq!(decode(b"", FP, 100), Err(Unused::Absent));
    assert_eq!(
        decode(text.as_bytes(), "fedcba9876543210", 100),
        Err(Unused::OtherDestination)
    );
    assert_eq!(
        decode(text.as_bytes(), FP, 99),
        Err(Unused::OtherOffset(100))
    );
    let newer = text.replacen("doka1", "doka2", 1);
    assert_eq!(
        decode(newer.as_bytes(), FP, 100),
        Err(Unused::OtherVersion("doka2".into()))
    );
    assert_eq!(decode(b"some tool's note", FP, 100), Err(Unused::Foreign));
    assert_eq!(decode(&[0xff, 0xfe], FP, 100), Err(Unused::Foreign));
    assert!(matches!(
        decode(format!("doka1:{FP}:100:0:r:").as_bytes(), FP, 100),
        Ok(r) if r.is_empty()
    ));
    // Cut short after a whole run: the count tells.
    let two = encode(FP, 100, [(101, 105), (107, 108)], DEFAULT_MAX_BYTES).unwrap();
    let one = encode(FP, 100, [(101, 105)], DEFAULT_MAX_BYTES).unwrap();
    let cut = format!(
        "{}{}",
        &two[..two.find(":r:").unwrap()],
        &one[one.find(":r:").unwrap()..]
    );
    assert_eq!(
        decode(cut.as_bytes(), FP, 100),
        Err(Unused::Unreadable("cut short: fewer runs than it says"))
    );
    for broken in [
        format!("doka1:{FP}:100"),
        format!("doka1:{FP}:100:1:r"),
        format!("doka1:{FP}:x:1:r:AA"),
        format!("doka1:{FP}:100:x:r:AA"),
        format!("doka1:{FP}:100:1:q:AA"),
        format!("doka1:{FP}:100:1:r:!!"),
        format!("doka1:{FP}:100:1:z:AAAA"),
        // A gap varint with no length after it.
        format!("doka1:{FP}:100:1:r:{}", BASE64.encode_to_string([0x01])),
        // A varint that never ends.
        format!("doka1:{FP}:100:1:r:{}", BASE64.encode_to_string([0x80; 12])),
    ] {
        assert!(
            matches!(
                decode(broken.as_bytes(), FP, 100),
                Err(Unused::Unreadable(_))
            ),
            "{broken}"
        );
    }
}

#[test]
fn what_does_not_fit_is_left_out_from_the_top() {
    // Every other offset delivered: 20,000 runs, more than 4 KB even compressed... or not.
    let delivered: Vec<(i64, i64)> = (0..20_000).map(|i| (2 * i + 1, 2 * i + 2)).collect();
    let text = encode(FP, 0, delivered.iter().copied(), DEFAULT_MAX_BYTES).unwrap();
    assert!(text.len() <= DEFAULT_MAX_BYTES, "{}", text.len());
    let back = decode(text.as_bytes(), FP, 0).unwrap();
    assert!(!back.is_empty());
    assert_eq!(back.ranges(), &delivered[..back.ranges().len()]);
    // Irregular runs do not compress: the raw prefix that fits.
    let irregular: Vec<(i64, i64)> = (0..5_000i64)
        .map(|i| {
            let start = i * 1_000 + 1 + (i * 7919) % 500;
            (start, start + 1 + (i * 104_729) % 300)
        })
        .collect();
    let text = encode(FP, 0, irregular.iter().copied(), DEFAULT_MAX_BYTES).unwrap();
    assert!(text.len() <= DEFAULT_MAX_BYTES);
    let back = decode(text.as_bytes(), FP, 0).unwrap();
    assert!(back.ranges().len() > 500, "{}", back.ranges().len());
    assert_eq!(back.ranges(), &irregular[..back.ranges().len()]);
}

#[test]
fn a_zlib_bomb_is_refused() {
    let zeros = vec![0u8; (MAX_DECODED_BYTES + 10) as usize];
    let packed = deflate(&zeros);
    let text = format!("doka1:{FP}:0:z:{}", BASE64.encode_to_string(&packed));
    assert!(matches!(
        decode(text.as_bytes(), FP, 0),
        Err(Unused::Unreadable(_))
    ));
}

#[test]
fn the_fingerprint_is_sixteen_hex_digits_of_the_identity() {
    let a = fingerprint("kinesis\norders\neu-west-1\n222222222222");
    assert_eq!(a.len(), 16);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(a, fingerprint("kinesis\norders\neu-west-1\n222222222222"));
    assert_ne!(a, fingerprint("kinesis\norders\neu-west-2\n222222222222"));
}

/// Runs above a commit: (gap from the previous run's end, length), as offsets.
fn runs_strategy() -> impl Strategy<Value = (i64, Vec<(i64, i64)>)> {
    (
        0i64..1_000_000_000_000,
        prop::collection::vec((0i64..300, 1i64..300), 0..800),
    )
        .prop_map(|(committed, shape)| {
            let mut previous_end = committed + 1;
            let mut runs = Vec::new();
            for (i, (gap, length)) in shape.into_iter().enumerate() {
                // Runs are disjoint and not adjacent, except the first may start right above
                // the commit.
                let gap = if i == 0 { gap } else { gap.max(1) };
                let start = previous_end + gap;
                runs.push((start, start + length));
                previous_end = start + length;
            }
            (committed, runs)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// What is stored fits, decodes to a prefix of what was given (from the lowest offsets up),
    /// never an offset that was not given; with room for everything, everything.
    #[test]
    fn encoded_runs_decode_to_a_prefix_of_the_input(
        (committed, runs) in runs_strategy(),
        max_bytes in 40usize..6_000,
    ) {
        let given = DeliveredRanges::from_ranges(runs.iter().copied());
        match encode(FP, committed, runs.iter().copied(), max_bytes) {
            None => prop_assert!(runs.is_empty() || max_bytes < 200),
            Some(text) => {
                prop_assert!(text.len() <= max_bytes);
                let back = decode(text.as_bytes(), FP, committed).unwrap();
                let (given_set, back_set) = (offsets(&given), offsets(&back));
                prop_assert!(back_set.is_subset(&given_set));
                if let Some(&highest) = back_set.iter().next_back() {
                    let below: BTreeSet<i64> =
                        given_set.range(..=highest).copied().collect();
                    prop_assert_eq!(&below, &back_set, "a prefix, with no hole");
                }
                if max_bytes >= 5_000 && runs.len() < 300 {
                    prop_assert_eq!(back, given);
                }
            }
        }
    }

    /// A cut or changed metadata string never names an offset that was not delivered; a cut one
    /// names nothing.
    #[test]
    fn damaged_metadata_never_claims_more(
        (committed, runs) in runs_strategy(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let given = offsets(&DeliveredRanges::from_ranges(runs.iter().copied()));
        let Some(text) = encode(FP, committed, runs.iter().copied(), DEFAULT_MAX_BYTES) else {
            return Ok(());
        };
        let cut_text = &text.as_bytes()[..cut.index(text.len())];
        if let Ok(back) = decode(cut_text, FP, committed) {
            prop_assert!(offsets(&back).is_subset(&given));
            // Only a cut inside the last base64 group's padding bits can still read whole.
            prop_assert_eq!(back, decode(text.as_bytes(), FP, committed).unwrap());
        }
        // A changed byte may make other valid runs (nothing can tell): it must not panic.
        let mut changed = text.into_bytes();
        let at = flip.index(changed.len());
        changed[at] = byte;
        let _ = decode(&changed, FP, committed);
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn any_bytes_decode_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes, FP, 7);
        let mut prefixed = format!("doka1:{FP}:7:3:r:").into_bytes();
        prefixed.extend_from_slice(&bytes);
        let _ = decode(&prefixed, FP, 7);
    }
}
