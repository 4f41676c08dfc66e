//! The driver against the register-level model of both controllers: bring-up and the
//! station address, the receive and transmit rings through many laps, ring-full and
//! damaged-frame handling, batching of tail writes, and memory hygiene.

// A panic in a test is a failed test. clippy.toml lets `#[test]` functions unwrap; this also
// covers the helpers of this test crate, which that setting does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake;

use fake::{Delivery, FakeConfig, FakeNic, BUS_OFFSET};
use keel_e1000::regs::*;
use keel_e1000::{E1000Error, Model, Options, E1000, RETURN_BATCH};
use keel_netdev::{NetDevice, NetDeviceError, MAX_FRAME};

const MODELS: [Model; 2] = [Model::I82540Em, Model::I82574L];
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

type Nic = E1000<fake::FakeRegs, fake::FakeHal>;

fn small() -> Options {
    Options {
        rx_descriptors: 8,
        tx_descriptors: 8,
    }
}

fn start(config: FakeConfig, options: Options) -> (FakeNic, Nic) {
    let fake = FakeNic::new(config.clone());
    let nic = E1000::start(fake.regs(), fake.hal(), config.model, options).unwrap();
    (fake, nic)
}

/// A frame to this station: destination, source, EtherType, and `n` as payload.
fn frame_to(dst: [u8; 6], n: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&n.to_le_bytes());
    f.resize(len.max(f.len()), (n % 251) as u8);
    f
}

fn receive(nic: &mut Nic) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_FRAME];
    nic.receive(&mut buf)
        .unwrap()
        .map(|len| buf[..len].to_vec())
}

#[test]
fn start_programs_both_parts_for_polling() {
    for model in MODELS {
        let (fake, nic) = start(FakeConfig::new(model), Options::default());
        assert_eq!(nic.mac_address(), MAC, "{model:?}");
        assert_eq!(nic.model(), model);
        assert!(nic.link_up());
        assert_eq!(nic.speed_mbps(), Some(1000));
        let s = fake.state();
        assert_eq!(s.resets, 1);
        // The address came from RAL/RAH; the EEPROM was not needed.
        assert_eq!(s.eeprom_reads, 0);
        drop(s);
        // Interrupts masked, the multicast table cleared of what was left in it.
        assert_eq!(fake.reg(IMS), 0);
        for i in 0..MTA_ENTRIES {
            assert_eq!(fake.reg(MTA + 4 * i), 0, "MTA[{i}]");
        }
        let ctrl = fake.reg(CTRL);
        assert_ne!(ctrl & CTRL_SLU, 0);
        assert_eq!(ctrl & (CTRL_LRST | CTRL_PHY_RST | CTRL_VME), 0);
        let rctl = fake.reg(RCTL);
        assert_eq!(
            rctl,
            RCTL_EN | RCTL_UPE | RCTL_MPE | RCTL_BAM | RCTL_SECRC,
            "receiver: enabled, promiscuous (the switch's uplink), broadcast, CRC stripped, 2 KiB buffers"
        );
        assert_eq!(fake.reg(TCTL) & (TCTL_EN | TCTL_PSP), TCTL_EN | TCTL_PSP);
        assert_eq!(fake.reg(TIPG), model.tipg());
        // Rings: bus addresses (not CPU pointers), every receive descriptor but one given.
        let rx_base = u64::from(fake.reg(RDBAL)) | (u64::from(fake.reg(RDBAH)) << 32);
        assert!(rx_base >= BUS_OFFSET);
        assert_eq!(fake.reg(RDLEN), 256 * 16);
        assert_eq!((fake.reg(RDH), fake.reg(RDT)), (0, 255));
        assert_eq!(fake.reg(TDLEN), 128 * 16);
        assert_eq!((fake.reg(TDH), fake.reg(TDT)), (0, 0));
    }
}

#[test]
fn address_comes_from_the_eeprom_in_each_parts_layout() {
    for model in MODELS {
        let mut config = FakeConfig::new(model);
        config.load_receive_address = false;
        config.eerd_reads = Some(3);
        config.eeprom_mac = [0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc];
        let (fake, nic) = start(config, small());
        assert_eq!(nic.mac_address(), [0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc]);
        assert_eq!(fake.state().eeprom_reads, 3, "{model:?}");
        // Written into Receive Address 0 so the filter accepts it.
        assert_eq!(fake.reg(RAL0), 0xaa21_1b00);
        assert_eq!(fake.reg(RAH0), 0x8000_ccbb);
        let mut nic = nic;
        assert_eq!(
            fake.inject(&frame_to([0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc], 1, 60)),
            Delivery::Delivered
        );
        assert!(receive(&mut nic).is_some());
    }
}

#[test]
fn a_reset_that_never_ends_fails_the_start_and_returns_memory() {
    for model in MODELS {
        let mut config = FakeConfig::new(model);
        config.reset_reads = None;
        let fake = FakeNic::new(config);
        let result = E1000::start(fake.regs(), fake.hal(), model, small());
        assert!(matches!(result, Err(E1000Error::ResetTimeout)));
        assert_eq!(fake.allocated_regions(), 0);
        assert_eq!(fake.state().frees, 4);
    }
}

#[test]
fn an_eeprom_that_never_answers_fails_the_start() {
    let mut config = FakeConfig::new(Model::I82574L);
    config.load_receive_address = false;
    config.eerd_reads = None;
    let fake = FakeNic::new(config);
    let result = E1000::start(fake.regs(), fake.hal(), Model::I82574L, small());
    assert!(matches!(result, Err(E1000Error::EepromTimeout { word: 0 })));
    assert_eq!(fake.allocated_regions(), 0);
}

#[test]
fn a_blank_eeprom_is_no_address() {
    let mut config = FakeConfig::new(Model::I82540Em);
    config.load_receive_address = false;
    config.eeprom_mac = [0xff; 6];
    let fake = FakeNic::new(config);
    let result = E1000::start(fake.regs(), fake.hal(), Model::I82540Em, small());
    assert!(matches!(result, Err(E1000Error::NoMacAddress)));
    assert_eq!(fake.allocated_regions(), 0);
}

#[test]
fn ring_sizes_the_hardware_cannot_take_are_refused() {
    let fake = FakeNic::new(FakeConfig::new(Model::I82540Em));
    for descriptors in [0, 4, 12, 4104] {
        let options = Options {
            rx_descriptors: descriptors,
            tx_descriptors: 8,
        };
        let result = E1000::start(fake.regs(), fake.hal(), Model::I82540Em, options);
        assert!(matches!(result, Err(E1000Error::RingSize { .. })));
    }
    assert_eq!(fake.allocated_regions(), 0);
}

#[test]
fn frames_arrive_in_order_across_many_laps_of_the_ring() {
    for model in MODELS {
        let (fake, mut nic) = start(FakeConfig::new(model), small());
        // 8 descriptors, one held back: at most 7 frames wait at a time.
        let mut sent = 0u32;
        let mut got = 0u32;
        while got < 100 {
            while sent < 100
                && fake.inject(&frame_to(MAC, sent, 60 + sent as usize)) == Delivery::Delivered
            {
                sent += 1;
            }
            while let Some(frame) = receive(&mut nic) {
                assert_eq!(frame, frame_to(MAC, got, 60 + got as usize), "{model:?}");
                got += 1;
            }
        }
        // Every full lap (14 of 7 frames) ended with the device finding no eighth descriptor;
        // the driver counts those from MPC.
        assert_eq!(fake.state().missed, 14);
        let c = nic.counters();
        assert_eq!(c.rx_frames, 100);
        assert_eq!(c.rx_dropped, 14);
        assert_eq!(fake.reg(MPC), 0, "read (and so cleared) by the driver");
        // Head and tail wrapped many times and the ring is whole: 7 descriptors free again.
        for n in 0..7 {
            assert_eq!(fake.inject(&frame_to(MAC, n, 60)), Delivery::Delivered);
        }
        assert_eq!(fake.inject(&frame_to(MAC, 7, 60)), Delivery::Missed);
    }
}

#[test]
fn descriptors_go_back_in_batches_not_one_register_write_per_frame() {
    let (fake, mut nic) = start(FakeConfig::new(Model::I82574L), Options::default());
    let before = fake.state().rdt_writes;
    for n in 0..200 {
        assert_eq!(fake.inject(&frame_to(MAC, n, 64)), Delivery::Delivered);
    }
    for n in 0..200 {
        assert_eq!(receive(&mut nic), Some(frame_to(MAC, n, 64)));
    }
    let writes = fake.state().rdt_writes - before;
    assert_eq!(writes, 200 / u32::from(RETURN_BATCH));
    // The empty poll hands back the rest.
    assert_eq!(receive(&mut nic), None);
    assert_eq!(fake.state().rdt_writes - before, writes + 1);
    assert_eq!(fake.reg(RDT), 199);
}

#[test]
fn the_receiver_is_promiscuous_for_the_switch_behind_it() {
    // The NIC is the virtual switch's uplink: frames for guests' MACs and multicast groups
    // come in as well as its own and broadcast; the switch decides.
    let (fake, mut nic) = start(FakeConfig::new(Model::I82540Em), small());
    let frames = [
        frame_to([0xff; 6], 1, 60),
        frame_to([0x02, 0, 0, 0, 0, 7], 2, 60),
        frame_to([0x01, 0, 0x5e, 0, 0, 1], 3, 60),
        frame_to(MAC, 4, 60),
    ];
    for f in &frames {
        assert_eq!(fake.inject(f), Delivery::Delivered);
    }
    for f in &frames {
        assert_eq!(receive(&mut nic).as_ref(), Some(f));
    }
    assert_eq!(receive(&mut nic), None);
}

#[test]
fn damaged_split_and_oversized_frames_are_dropped_and_counted_never_passed_on() {
    for model in MODELS {
        let (fake, mut nic) = start(FakeConfig::new(model), small());
        fake.inject_with_errors(&frame_to(MAC, 1, 60), 0x01); // CRC error
        fake.inject_with_errors(&frame_to(MAC, 2, 60), 0x20); // TCP checksum: not fatal
        fake.inject_split(&frame_to(MAC, 3, 300), 128); // three descriptors
        fake.inject_bad_length();
        fake.inject(&frame_to(MAC, 4, 60));
        assert_eq!(receive(&mut nic), Some(frame_to(MAC, 2, 60)));
        assert_eq!(receive(&mut nic), Some(frame_to(MAC, 4, 60)));
        assert_eq!(receive(&mut nic), None);
        let c = nic.counters();
        // CRC error, three fragments, the bad length.
        assert_eq!(c.rx_dropped, 5, "{model:?}");
        assert_eq!(c.errors, 2);
        assert_eq!(c.rx_frames, 2);
    }
}

#[test]
fn a_frame_larger_than_the_callers_buffer_is_dropped_not_truncated() {
    let (fake, mut nic) = start(FakeConfig::new(Model::I82574L), small());
    fake.inject(&frame_to(MAC, 1, 1000));
    fake.inject(&frame_to(MAC, 2, 100));
    let mut small_buf = [0u8; 500];
    assert_eq!(nic.receive(&mut small_buf), Ok(Some(100)));
    assert_eq!(small_buf[..100], frame_to(MAC, 2, 100)[..]);
    assert_eq!(nic.counters().rx_dropped, 1);
}

#[test]
fn frames_are_sent_in_order_across_many_laps_of_the_ring() {
    for model in MODELS {
        let (fake, mut nic) = start(FakeConfig::new(model), small());
        for n in 0..100 {
            assert!(nic.can_transmit());
            nic.transmit(&frame_to([0xff; 6], n, 42 + n as usize * 14))
                .unwrap();
            assert_eq!(
                fake.take_sent(),
                Some(frame_to([0xff; 6], n, 42 + n as usize * 14))
            );
        }
        assert_eq!(fake.take_sent(), None);
        let c = nic.counters();
        assert_eq!(c.tx_frames, 100);
        assert_eq!(fake.reg(TDT), 100 % 8);
        assert_eq!(fake.reg(TDH), 100 % 8);
        assert_eq!(nic.tx_in_flight(), 0);
    }
}

#[test]
fn a_full_transmit_ring_reports_busy_until_the_device_catches_up() {
    let (fake, mut nic) = start(FakeConfig::new(Model::I82540Em), small());
    fake.state().hold_tx = true;
    for n in 0..7 {
        nic.transmit(&frame_to([0xff; 6], n, 60)).unwrap();
    }
    assert_eq!(nic.tx_in_flight(), 7);
    assert!(!nic.can_transmit());
    assert_eq!(
        nic.transmit(&frame_to([0xff; 6], 7, 60)),
        Err(NetDeviceError::Busy)
    );
    assert_eq!(nic.counters().tx_dropped, 1);
    assert_eq!(fake.take_sent(), None);
    fake.release_tx();
    assert!(nic.can_transmit());
    assert_eq!(nic.tx_in_flight(), 0);
    nic.transmit(&frame_to([0xff; 6], 7, 60)).unwrap();
    for n in 0..8 {
        assert_eq!(fake.take_sent(), Some(frame_to([0xff; 6], n, 60)));
    }
}

#[test]
fn oversized_and_empty_frames_are_refused_before_the_ring() {
    let (fake, mut nic) = start(FakeConfig::new(Model::I82574L), small());
    assert_eq!(
        nic.transmit(&[0; MAX_FRAME + 1]),
        Err(NetDeviceError::FrameTooLarge { len: MAX_FRAME + 1 })
    );
    assert_eq!(nic.transmit(&[]), Err(NetDeviceError::Device));
    nic.transmit(&[0x5a; MAX_FRAME]).unwrap();
    assert_eq!(fake.take_sent().map(|f| f.len()), Some(MAX_FRAME));
    assert_eq!(fake.take_sent(), None);
    assert_eq!(
        fake.state().tdt_writes,
        2,
        "one at start, one for the frame"
    );
}

#[test]
fn dropping_the_driver_stops_the_device_before_freeing_its_memory() {
    for model in MODELS {
        let (fake, nic) = start(FakeConfig::new(model), small());
        assert_eq!(fake.allocated_regions(), 4);
        drop(nic);
        // The HAL model panics if memory is freed while RCTL.EN or TCTL.EN is set.
        assert_eq!(fake.allocated_regions(), 0);
        assert_eq!(fake.state().resets, 2);
        assert_eq!(fake.inject(&frame_to(MAC, 1, 60)), Delivery::Filtered);
    }
}

#[test]
fn a_nic_without_link_starts_and_says_so() {
    let mut config = FakeConfig::new(Model::I82574L);
    config.link_up = false;
    let (fake, mut nic) = start(config, small());
    assert!(!nic.link_up());
    assert_eq!(nic.speed_mbps(), None);
    // Set Link Up was asked for all the same, so the link comes up when the PHY has one.
    assert_ne!(fake.reg(CTRL) & CTRL_SLU, 0);
    assert_eq!(fake.inject(&frame_to(MAC, 1, 60)), Delivery::Filtered);
    assert_eq!(receive(&mut nic), None);
    assert_eq!(
        fake.state().rdt_writes,
        1,
        "an idle ring costs no register access"
    );
}
