//! The farm ingress program's view of the frames it sees.

/// What the farm ingress program recognised a frame as; the index of its
/// counter in the `FARM_CLASS_COUNTERS` per-CPU array.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PacketClass {
    /// An ARP frame (request or reply) with a complete Ethernet/IPv4 ARP body.
    Arp = 0,
    /// An IPv4 packet whose header is complete and well formed.
    Ipv4 = 1,
    /// An IPv6 packet whose fixed header is complete.
    Ipv6 = 2,
    /// Any other EtherType (LLDP, STP, …): passed, never inspected further.
    Other = 3,
    /// A frame too short for the headers its EtherType announces, or an IPv4
    /// header with a bad version or length.
    Malformed = 4,
    /// Counted in addition to the class above: the frame carried at least one
    /// 802.1Q/802.1ad tag.
    VlanTagged = 5,
}

impl PacketClass {
    /// Every class, in counter-index order.
    pub const ALL: [PacketClass; 6] = [
        PacketClass::Arp,
        PacketClass::Ipv4,
        PacketClass::Ipv6,
        PacketClass::Other,
        PacketClass::Malformed,
        PacketClass::VlanTagged,
    ];

    /// The number of counters in `FARM_CLASS_COUNTERS`.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// A stable lowercase name, for metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            PacketClass::Arp => "arp",
            PacketClass::Ipv4 => "ipv4",
            PacketClass::Ipv6 => "ipv6",
            PacketClass::Other => "other",
            PacketClass::Malformed => "malformed",
            PacketClass::VlanTagged => "vlan_tagged",
        }
    }
}

/// How many VLAN tags the parser walks through before giving up on a frame
/// (QinQ is two; more is not a frame a farm interface should see).
pub const MAX_VLAN_TAGS: usize = 2;
