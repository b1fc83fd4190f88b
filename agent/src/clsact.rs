//! Who owns orb8's clsact filters (the TC fallback for kernels without TCX), so an agent removes
//! only the filters of agents that are gone and never those of a live one on the same node.
//!
//! clsact filters outlive the process that added them. Each agent gives its filters its own
//! process id as the filter handle (`tc filter show` prints it as `handle 0x<pid>`). A filter
//! named after one of orb8's programs belongs to a live agent while process `handle` holds a
//! file descriptor of the filter's program (`prog_id` in `/proc/<pid>/fdinfo/<fd>`): a recycled
//! pid does not hold it, and neither does anything once the agent has died. When the owner
//! cannot be checked (its `/proc/<pid>/fd` is unreadable), the filter is kept: a leftover filter
//! costs a little CPU, removing a live agent's would silently stop its counting.
//!
//! Pids are read in this process's `/proc`, so agents sharing a node must share its PID
//! namespace (local agents do; agent pods use `hostPID`).

use std::{io, path::Path};

use rtnetlink::{
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    },
    sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

/// The clsact hook a filter is on (the filter's parent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `ffff:fff2`.
    Ingress,
    /// `ffff:fff3`.
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        TcHandle {
            major: TcHandle::CLSACT.major,
            minor: match self {
                Hook::Ingress => TcHandle::MIN_INGRESS,
                Hook::Egress => TcHandle::MIN_EGRESS,
            },
        }
    }
}

/// One BPF filter on a clsact hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// Its priority (`pref`).
    pub priority: u16,
    /// Its handle: for orb8's filters, the owning agent's pid.
    pub handle: u32,
    /// The name it was added with (the program's name).
    pub name: String,
    /// The id of the BPF program it runs.
    pub prog_id: u32,
}

/// Whether the agent that added a filter is still there.
#[derive(Debug)]
pub enum Owner {
    /// Its process holds the filter's program.
    Alive,
    /// No such process, or it does not hold the program (the pid was reused).
    Gone,
    /// Its file descriptors could not be read.
    Unknown(io::Error),
}

/// The handle this process gives its filters: its pid.
pub fn own_handle() -> u32 {
    std::process::id()
}

/// The BPF filters on `hook` of interface `ifindex`, over a netlink dump.
pub fn list(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = hook.parent();
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut filters = Vec::new();
    // A dump ends with NLMSG_DONE; each datagram carries whole messages.
    for _ in 0..100_000 {
        let (data, _) = socket.recv_from_full()?;
        if data.is_empty() {
            break;
        }
        let mut offset = 0;
        while offset < data.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(io::Error::other)?;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(filters),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    filters.extend(parse(&m));
                }
                _ => {}
            }
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
        }
    }
    Err(io::Error::other("the filter dump did not end"))
}

/// A BPF filter from a dump message; `None` for other kinds and for a priority's head entry.
fn parse(m: &TcMessage) -> Option<Filter> {
    let mut bpf = false;
    let (mut name, mut prog_id) = (None, None);
    for attr in &m.attributes {
        match attr {
            TcAttribute::Kind(k) => bpf = k == "bpf",
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => prog_id = Some(*i),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    bpf.then_some(())?;
    Some(Filter {
        priority: (m.header.info >> 16) as u16,
        handle: u32::from(m.header.handle),
        name: name?,
        prog_id: prog_id?,
    })
}

/// Whether the agent behind `filter` is alive, looking in `proc` (normally `/proc`).
pub fn owner(filter: &Filter, proc: &Path) -> Owner {
    let dir = proc.join(filter.handle.to_string());
    let fds = match std::fs::read_dir(dir.join("fd")) {
        Ok(fds) => fds,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Owner::Gone,
        Err(e) => return Owner::Unknown(e),
    };
    for fd in fds.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog");
        if is_prog
            && std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name()))
                .is_ok_and(|info| holds(&info, filter.prog_id))
        {
            return Owner::Alive;
        }
    }
    Owner::Gone
}

/// Whether an fdinfo text is that of BPF program `prog_id`.
fn holds(fdinfo: &str, prog_id: u32) -> bool {
    fdinfo.lines().any(|l| {
        l.strip_prefix("prog_id:")
            .and_then(|v| v.trim().parse::<u32>().ok())
            == Some(prog_id)
    })
}

/// The filters among `filters` to remove: those named one of `ours` whose owner is gone.
pub fn stale(filters: &[Filter], ours: &[&str], owner: impl Fn(&Filter) -> Owner) -> Vec<Filter> {
    filters
        .iter()
        .filter(|f| ours.contains(&f.name.as_str()))
        .filter(|f| match owner(f) {
            Owner::Alive => false,
            Owner::Gone => true,
            Owner::Unknown(e) => {
                log::info!(
                    "keeping orb8 filter {} (pref {}, handle {:#x}): cannot tell whether process {} still runs it: {e}",
                    f.name,
                    f.priority,
                    f.handle,
                    f.handle
                );
                false
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(name: &str, handle: u32, prog_id: u32) -> Filter {
        Filter {
            priority: 49152,
            handle,
            name: name.into(),
            prog_id,
        }
    }

    #[test]
    fn reads_the_program_id_of_an_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t3\nprog_jited:\t1\nprog_tag:\tb3d6c5e0c7e2a9f1\nmemlock:\t4096\nprog_id:\t4242\nrun_time_ns:\t0\n";
        assert!(holds(info, 4242));
        assert!(!holds(info, 424));
        assert!(!holds("pos:\t0\nflags:\t02\n", 4242));
    }

    #[test]
    fn only_dead_owners_filters_of_our_programs_are_stale() {
        let filters = vec![
            filter("orb8_tc_ingress", 100, 7), // alive
            filter("orb8_tc_ingress", 200, 8), // gone
            filter("orb8_tc_ingress", 300, 9), // cannot tell
            filter("cilium_ingress", 400, 10), // not ours, owner gone
        ];
        let got = stale(
            &filters,
            &["orb8_tc_ingress", "orb8_tc_egress"],
            |f| match f.handle {
                100 => Owner::Alive,
                300 => Owner::Unknown(io::ErrorKind::PermissionDenied.into()),
                _ => Owner::Gone,
            },
        );
        assert_eq!(got, vec![filter("orb8_tc_ingress", 200, 8)]);
    }

    #[test]
    fn a_process_that_does_not_hold_the_program_is_not_its_owner() {
        let proc = Path::new("/proc");
        // This process holds no BPF program at all: a filter naming it as owner is stale.
        let mine = filter("orb8_tc_ingress", std::process::id(), u32::MAX);
        assert!(matches!(owner(&mine, proc), Owner::Gone));
        // No process has pid u32::MAX.
        let nobody = filter("orb8_tc_ingress", u32::MAX, 1);
        assert!(matches!(owner(&nobody, proc), Owner::Gone));
    }
}
