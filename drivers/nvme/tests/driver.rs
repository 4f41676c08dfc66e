//! The NVMe driver against a command-level model of a controller: bring-up, data transfers
//! of every PRP shape, many outstanding commands completing out of order, typed errors and
//! short transfers, retries, controller reset on fatal status, and memory hygiene.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use fake::{FakeConfig, FakeHal, FakeNvme, FakeRegs, Injection, Order};
use keel_block::{sync, BlockDevice, BlockError, Completion, Request, RequestId, RequestKind};
use keel_nvme::command::{admin, io};
use keel_nvme::{Controller, DiskOptions, NvmeDisk, NvmeError, StatusCode, Waiting};

type Disk = NvmeDisk<FakeRegs, FakeHal>;

fn open_with(config: FakeConfig, options: DiskOptions) -> (Disk, FakeNvme) {
    let fake = FakeNvme::new(config);
    let (regs, hal) = fake.parts();
    let controller = Controller::start(regs, hal).expect("controller starts");
    let disk = NvmeDisk::open(controller, options).expect("namespace opens");
    (disk, fake)
}

fn open(config: FakeConfig) -> (Disk, FakeNvme) {
    open_with(config, DiskOptions::default())
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i % 251) as u8))
        .collect()
}

/// Polls until `n` completions arrived.
fn collect(disk: &mut Disk, n: usize) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        if out.len() == n {
            return out;
        }
        if let Some(c) = disk.poll_completion() {
            out.push(c);
        }
    }
    panic!("only {} of {n} completions arrived", out.len());
}

#[test]
fn start_identifies_controller_and_namespace_geometry() {
    let (disk, fake) = open(FakeConfig::default());
    let info = disk.info();
    assert_eq!(info.sector_size, 512);
    assert_eq!(info.capacity_sectors, 16 * 1024);
    assert_eq!(info.identity, "nvme-FAKE0001-n1");
    assert_eq!(info.queue_depth, 63);
    // MDTS 7 with 4 KiB pages: 512 KiB per transfer.
    assert_eq!(info.max_transfer_sectors, 1024);
    assert!(info.supports_discard);
    assert!(info.volatile_write_cache);
    assert!(!info.read_only);
    let controller = disk.controller();
    assert_eq!(controller.identity().model, "Keel fake NVMe");
    assert_eq!(controller.version(), (1, 4));
    assert_eq!(controller.namespaces().len(), 1);
    assert!(fake.controller_enabled());
    assert!(
        fake.interrupts_masked(),
        "Keel polls: interrupts must be masked"
    );
}

#[test]
fn geometry_follows_the_controller_limits() {
    let config = FakeConfig {
        block_size: 4096,
        mdts: 0,
        max_queue_entries: 8,
        deallocate: false,
        volatile_write_cache: false,
        serial: "S/N 7".into(),
        ..FakeConfig::default()
    };
    let (disk, _fake) = open(config);
    let info = disk.info();
    assert_eq!(info.sector_size, 4096);
    // No MDTS: one PRP list page (2 MiB) is the limit.
    assert_eq!(info.max_transfer_sectors, 512);
    assert_eq!(info.queue_depth, 7);
    assert!(!info.supports_discard);
    assert!(!info.volatile_write_cache);
    // Characters a command line cannot carry are replaced.
    assert_eq!(info.identity, "nvme-S_N_7-n1");
}

#[test]
fn second_namespace_can_be_chosen_and_a_missing_one_is_refused() {
    let config = FakeConfig {
        namespace_blocks: vec![1024, 2048],
        ..FakeConfig::default()
    };
    let options = DiskOptions {
        nsid: Some(2),
        identity: Some("disk-b".into()),
        ..DiskOptions::default()
    };
    let (mut disk, fake) = open_with(config.clone(), options);
    assert_eq!(disk.info().capacity_sectors, 2048);
    assert_eq!(disk.info().identity, "disk-b");
    sync::write(&mut disk, 3, &pattern(1, 512)).unwrap();
    assert_eq!(fake.peek(2, 3 * 512, 512), pattern(1, 512));
    assert_eq!(fake.peek(1, 3 * 512, 512), vec![0; 512]);

    let fake = FakeNvme::new(config);
    let (regs, hal) = fake.parts();
    let controller = Controller::start(regs, hal).unwrap();
    let options = DiskOptions {
        nsid: Some(9),
        ..DiskOptions::default()
    };
    assert_eq!(
        NvmeDisk::open(controller, options).err(),
        Some(NvmeError::NamespaceNotFound(9))
    );
    assert_eq!(fake.live_regions(), 0, "a failed open must free its memory");
}

#[test]
fn transfers_of_every_prp_shape_round_trip() {
    let (mut disk, fake) = open(FakeConfig::default());
    // One sector, one page, two pages (PRP2), a list, and the largest transfer.
    for (i, len) in [512, 4096, 8192, 12288, 65536, 512 * 1024]
        .into_iter()
        .enumerate()
    {
        let lba = 7 + (i as u64) * 1100;
        let data = pattern(i as u8, len);
        sync::write(&mut disk, lba, &data).unwrap();
        assert_eq!(
            fake.peek(1, lba as usize * 512, len),
            data,
            "write of {len}"
        );
        let mut back = vec![0u8; len];
        sync::read(&mut disk, lba, &mut back).unwrap();
        assert_eq!(back, data, "read of {len}");
    }
    let lists: Vec<usize> = fake
        .executed()
        .iter()
        .filter(|e| e.used_list)
        .map(|e| e.command.blocks() as usize * 512)
        .collect();
    assert!(
        lists.contains(&(512 * 1024)),
        "large transfers use a PRP list: {lists:?}"
    );
    assert!(!lists.contains(&512), "one sector needs no list");
}

#[test]
fn an_oversized_transfer_is_refused_before_reaching_the_controller() {
    let (mut disk, fake) = open(FakeConfig::default());
    let before = fake.executed().len();
    let request = Request::Write {
        lba: 0,
        buffer: vec![0; 1025 * 512],
    };
    let rejected = disk.submit(request).unwrap_err();
    assert_eq!(
        rejected.error,
        BlockError::TooLarge {
            sectors: 1025,
            max_sectors: 1024
        }
    );
    assert_eq!(
        rejected.request.into_buffer().map(|b| b.len()),
        Some(1025 * 512)
    );
    let out_of_range = disk
        .submit(Request::Read {
            lba: 16 * 1024,
            buffer: vec![0; 512],
        })
        .unwrap_err();
    assert!(matches!(out_of_range.error, BlockError::OutOfRange { .. }));
    assert_eq!(fake.executed().len(), before);
}

#[test]
fn many_commands_are_outstanding_and_complete_out_of_order() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.hold_completions(true);
    let depth = usize::from(disk.info().queue_depth);
    let mut ids = Vec::new();
    for i in 0..depth {
        let request = Request::Write {
            lba: (i * 8) as u64,
            buffer: pattern(i as u8, 4096),
        };
        ids.push((disk.submit(request).unwrap(), i));
    }
    assert_eq!(disk.in_flight(), depth);
    let busy = disk.submit(Request::Flush).expect_err("the queue is full");
    assert_eq!(busy.error, BlockError::Busy);
    assert_eq!(fake.held(), 0, "the doorbell is rung when the caller polls");
    assert!(disk.poll_completion().is_none());
    assert_eq!(fake.held(), depth, "every command reached the controller");
    assert_eq!(
        fake.sq_doorbell_writes(),
        1,
        "one doorbell for the whole batch"
    );

    fake.release(Order::Lifo);
    let completions = collect(&mut disk, depth);
    assert_eq!(disk.in_flight(), 0);
    assert_eq!(fake.max_outstanding(), depth);
    // Completions arrive newest first, and each carries its own buffer back.
    assert_eq!(
        completions.first().map(|c| c.id),
        ids.last().map(|(id, _)| *id)
    );
    for completion in completions {
        let i = ids.iter().find(|(id, _)| *id == completion.id).unwrap().1;
        assert_eq!(completion.result, Ok(()));
        assert_eq!(completion.kind, RequestKind::Write);
        assert_eq!(completion.buffer, Some(pattern(i as u8, 4096)));
        assert_eq!(fake.peek(1, i * 8 * 512, 4096), pattern(i as u8, 4096));
    }
    assert_eq!(
        fake.live_regions(),
        6,
        "queues, scratch and list pages only"
    );
}

#[test]
fn queues_wrap_around_many_times() {
    let (mut disk, fake) = open(FakeConfig {
        max_queue_entries: 4,
        ..FakeConfig::default()
    });
    for round in 0..50u64 {
        let data = pattern(round as u8, 512);
        sync::write(&mut disk, round, &data).unwrap();
        let mut back = vec![0u8; 512];
        sync::read(&mut disk, round, &mut back).unwrap();
        assert_eq!(back, data);
    }
    assert_eq!(fake.executed().len(), 100);
}

#[test]
fn unreachable_buffers_are_bounced() {
    let (mut disk, fake) = open(FakeConfig {
        direct_dma: false,
        ..FakeConfig::default()
    });
    let data = pattern(9, 3 * 4096);
    sync::write(&mut disk, 40, &data).unwrap();
    assert_eq!(fake.peek(1, 40 * 512, data.len()), data);
    let mut back = vec![0u8; data.len()];
    sync::read(&mut disk, 40, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(disk.stats().bounced, 2);
    assert_eq!(fake.live_regions(), 6, "bounce buffers are freed");
}

#[test]
fn media_errors_are_decoded_and_reported() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.inject(Injection {
        opcode: io::READ,
        nth: 0,
        sct: 2,
        sc: 0x81,
        dnr: true,
        blocks_done: 0,
    });
    let mut out = vec![0u8; 1024];
    assert_eq!(
        sync::read(&mut disk, 12, &mut out),
        Err(BlockError::Io {
            first_failed_lba: 12
        })
    );
    let errors = disk.take_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, RequestKind::Read);
    assert_eq!(errors[0].lba, 12);
    let status = errors[0].status.unwrap();
    assert_eq!(status.code, StatusCode::UnrecoveredReadError);
    assert!(status.do_not_retry);
    assert!(disk.take_errors().is_empty());
    // The disk keeps working.
    sync::read(&mut disk, 12, &mut out).unwrap();
}

#[test]
fn status_codes_map_to_block_errors() {
    let (mut disk, fake) = open(FakeConfig::default());
    let cases = [
        (io::WRITE, 0u8, 0x81u8, BlockError::NoSpace),
        (io::WRITE, 0, 0x20, BlockError::ReadOnly),
        (
            io::WRITE,
            0,
            0x80,
            BlockError::OutOfRange {
                lba: 5,
                sectors: 1,
                capacity_sectors: 16 * 1024,
            },
        ),
        (
            io::FLUSH,
            0,
            0x06,
            BlockError::Io {
                first_failed_lba: 0,
            },
        ),
    ];
    for (opcode, sct, sc, expected) in cases {
        fake.inject(Injection {
            opcode,
            nth: 0,
            sct,
            sc,
            dnr: true,
            blocks_done: 0,
        });
        let result = if opcode == io::FLUSH {
            sync::flush(&mut disk)
        } else {
            sync::write(&mut disk, 5, &[1; 512])
        };
        assert_eq!(result, Err(expected), "status {sct}/{sc:#x}");
    }
}

#[test]
fn a_short_write_is_never_reported_as_success() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.inject(Injection {
        opcode: io::WRITE,
        nth: 0,
        sct: 2,
        sc: 0x80,
        dnr: true,
        blocks_done: 3,
    });
    let data = pattern(3, 8 * 512);
    let result = sync::write(&mut disk, 100, &data);
    assert_eq!(
        result,
        Err(BlockError::Io {
            first_failed_lba: 100
        })
    );
    // The controller wrote a prefix before failing; the error covers the whole request.
    assert_eq!(fake.peek(1, 100 * 512, 3 * 512), data[..3 * 512]);
    assert_eq!(fake.peek(1, 103 * 512, 5 * 512), vec![0; 5 * 512]);
    assert_eq!(
        disk.take_errors()[0].status.unwrap().code,
        StatusCode::WriteFault
    );
}

#[test]
fn a_short_read_does_not_hand_back_partial_data_as_good() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.poke(1, 0, &pattern(4, 4096));
    fake.inject(Injection {
        opcode: io::READ,
        nth: 0,
        sct: 0,
        sc: 0x04, // data transfer error
        dnr: true,
        blocks_done: 2,
    });
    let id = disk
        .submit(Request::Read {
            lba: 0,
            buffer: vec![0; 4096],
        })
        .unwrap();
    let completion = collect(&mut disk, 1).remove(0);
    assert_eq!(completion.id, id);
    assert_eq!(
        completion.result,
        Err(BlockError::Io {
            first_failed_lba: 0
        })
    );
    // The buffer still comes back to its owner.
    assert_eq!(completion.buffer.map(|b| b.len()), Some(4096));
}

#[test]
fn a_transient_status_is_retried_once() {
    let (mut disk, fake) = open(FakeConfig::default());
    // Namespace not ready, retry allowed: the resubmission succeeds.
    fake.inject(Injection {
        opcode: io::WRITE,
        nth: 0,
        sct: 0,
        sc: 0x82,
        dnr: false,
        blocks_done: 0,
    });
    sync::write(&mut disk, 1, &pattern(5, 512)).unwrap();
    assert_eq!(fake.peek(1, 512, 512), pattern(5, 512));
    assert_eq!(disk.stats().retried, 1);

    // Failing twice in a row is final.
    for nth in [0, 1] {
        fake.inject(Injection {
            opcode: io::WRITE,
            nth,
            sct: 0,
            sc: 0x82,
            dnr: false,
            blocks_done: 0,
        });
    }
    assert_eq!(
        sync::write(&mut disk, 1, &pattern(6, 512)),
        Err(BlockError::Io {
            first_failed_lba: 1
        })
    );
    assert_eq!(disk.stats().retried, 2);
    // With "do not retry" there is no second attempt.
    fake.inject(Injection {
        opcode: io::WRITE,
        nth: 0,
        sct: 0,
        sc: 0x82,
        dnr: true,
        blocks_done: 0,
    });
    let retried = disk.stats().retried;
    assert!(sync::write(&mut disk, 1, &pattern(7, 512)).is_err());
    assert_eq!(disk.stats().retried, retried);
}

#[test]
fn flush_and_discard_reach_the_controller() {
    let (mut disk, fake) = open(FakeConfig::default());
    sync::write(&mut disk, 10, &pattern(1, 4096)).unwrap();
    sync::flush(&mut disk).unwrap();
    sync::discard(&mut disk, 11, 2).unwrap();
    let executed = fake.executed();
    let opcodes: Vec<u8> = executed.iter().map(|e| e.command.opcode).collect();
    assert_eq!(opcodes, vec![io::WRITE, io::FLUSH, io::DATASET_MANAGEMENT]);
    assert_eq!(executed[2].command.cdw[1], 1 << 2, "deallocate attribute");
    assert_eq!(fake.peek(1, 10 * 512, 512), pattern(1, 4096)[..512]);
    assert_eq!(fake.peek(1, 11 * 512, 1024), vec![0; 1024]);
    assert_eq!(fake.peek(1, 13 * 512, 512), pattern(1, 4096)[1536..2048]);
}

#[test]
fn discard_is_refused_when_the_controller_lacks_it() {
    let (mut disk, fake) = open(FakeConfig {
        deallocate: false,
        ..FakeConfig::default()
    });
    assert_eq!(
        sync::discard(&mut disk, 0, 1),
        Err(BlockError::Unsupported(RequestKind::Discard))
    );
    assert!(fake.executed().is_empty());
}

#[test]
fn fatal_status_resets_the_controller_and_resubmits_outstanding_commands() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.hold_completions(true);
    let mut ids: Vec<(RequestId, usize)> = Vec::new();
    for i in 0..4 {
        let request = Request::Write {
            lba: i as u64 * 8,
            buffer: pattern(10 + i as u8, 4096),
        };
        ids.push((disk.submit(request).unwrap(), i));
    }
    // The controller dies with all four fetched and none completed.
    fake.fatal_now();
    fake.hold_completions(false);
    let completions = collect(&mut disk, 4);
    assert_eq!(fake.enables(), 2, "the driver reset the controller");
    assert_eq!(disk.stats().resets, 1);
    for completion in completions {
        assert_eq!(completion.result, Ok(()), "resubmitted after the reset");
        let i = ids.iter().find(|(id, _)| *id == completion.id).unwrap().1;
        assert_eq!(fake.peek(1, i * 8 * 512, 4096), pattern(10 + i as u8, 4096));
    }
    // And it keeps working on the recreated queue.
    sync::write(&mut disk, 500, &pattern(1, 512)).unwrap();
    assert!(!disk.has_failed());
}

#[test]
fn fatal_status_while_fetching_is_recovered_too() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.fatal_after(0);
    sync::write(&mut disk, 3, &pattern(2, 512)).unwrap();
    assert_eq!(fake.peek(1, 3 * 512, 512), pattern(2, 512));
    assert_eq!(disk.stats().resets, 1);
}

#[test]
fn a_command_lost_to_two_resets_fails_instead_of_looping() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.fatal_after(0);
    let id = disk
        .submit(Request::Write {
            lba: 0,
            buffer: vec![1; 512],
        })
        .unwrap();
    // Polling rings the doorbell: the command is lost. Then the resubmission is lost too.
    assert!(disk.poll_completion().is_none());
    fake.fatal_after(0);
    let completion = collect(&mut disk, 1).remove(0);
    assert_eq!(completion.id, id);
    assert_eq!(
        completion.result,
        Err(BlockError::Io {
            first_failed_lba: 0
        })
    );
    assert_eq!(disk.stats().resets, 2);
    assert_eq!(disk.take_errors().last().map(|e| e.status), Some(None));
}

#[test]
fn a_controller_that_does_not_come_back_fails_everything_with_device_gone() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.hold_completions(true);
    let ids: Vec<RequestId> = (0..3)
        .map(|i| {
            disk.submit(Request::Read {
                lba: i,
                buffer: vec![0; 512],
            })
            .unwrap()
        })
        .collect();
    fake.refuse_enable(true);
    fake.fatal_now();
    let completions = collect(&mut disk, 3);
    for completion in &completions {
        assert!(ids.contains(&completion.id));
        assert_eq!(completion.result, Err(BlockError::DeviceGone));
        assert!(completion.buffer.is_some());
    }
    assert!(disk.has_failed());
    let rejected = disk.submit(Request::Flush).unwrap_err();
    assert_eq!(rejected.error, BlockError::DeviceGone);
    assert_eq!(disk.in_flight(), 0);
}

#[test]
fn explicit_reset_keeps_the_disk_usable() {
    let (mut disk, fake) = open(FakeConfig::default());
    sync::write(&mut disk, 1, &pattern(1, 512)).unwrap();
    disk.reset().unwrap();
    assert_eq!(fake.enables(), 2);
    let mut back = vec![0u8; 512];
    sync::read(&mut disk, 1, &mut back).unwrap();
    assert_eq!(back, pattern(1, 512));
}

#[test]
fn close_returns_every_piece_of_dma_memory() {
    let (mut disk, fake) = open(FakeConfig::default());
    fake.hold_completions(true);
    disk.submit(Request::Read {
        lba: 0,
        buffer: vec![0; 4096],
    })
    .unwrap();
    let _ = disk.close();
    assert_eq!(fake.live_regions(), 0);
    assert!(!fake.controller_enabled());
}

#[test]
fn start_failures_are_typed() {
    let fake = FakeNvme::new(FakeConfig::default());
    fake.refuse_enable(true);
    let (regs, hal) = fake.parts();
    assert_eq!(
        Controller::start(regs, hal).err(),
        Some(NvmeError::Timeout {
            waiting_for: Waiting::Enable
        })
    );

    let fake = FakeNvme::new(FakeConfig::default());
    fake.fail_admin(admin::IDENTIFY, 0, 0x06);
    let (regs, hal) = fake.parts();
    match Controller::start(regs, hal).err() {
        Some(NvmeError::AdminCommand { opcode, status }) => {
            assert_eq!(opcode, admin::IDENTIFY);
            assert_eq!(status.code, StatusCode::InternalError);
        }
        other => panic!("expected an identify failure, got {other:?}"),
    }

    let fake = FakeNvme::new(FakeConfig {
        namespace_blocks: vec![],
        ..FakeConfig::default()
    });
    let (regs, hal) = fake.parts();
    let controller = Controller::start(regs, hal).unwrap();
    assert_eq!(
        NvmeDisk::open(controller, DiskOptions::default()).err(),
        Some(NvmeError::NoNamespace)
    );
}

#[test]
fn a_wider_doorbell_stride_is_honoured() {
    let (mut disk, fake) = open(FakeConfig {
        doorbell_stride_shift: 2,
        ..FakeConfig::default()
    });
    sync::write(&mut disk, 2, &pattern(8, 512)).unwrap();
    assert_eq!(fake.peek(1, 1024, 512), pattern(8, 512));
}
