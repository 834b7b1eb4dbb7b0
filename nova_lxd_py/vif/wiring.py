"""How each VIF type wires the host end of a port's veth pair.

``vif.driver`` makes and deletes the pair the same way for every type; a
Wiring adds what the port's backend expects around it. The contract is
documented here once; subclasses do not repeat it.
"""

from nova_lxd_py.privsep import net
from nova_lxd_py.vif import naming


class Wiring:
    """The host side of one VIF type; stateless, one instance per type."""

    def check(self, vif):
        """Raise naming.InvalidVif if this VIF cannot be wired.

        Called before anything is made for any port of the instance, so a
        bad port costs nothing to refuse.
        """

    def bridge(self, instance, vif):
        """Prepare what the host end joins, before the pair is made.

        Returns the Linux bridge the host end must be a port of, '' for no
        bridge, or None to leave its master alone (another component
        enslaves it). Idempotent: also runs when a plugged port is plugged
        again (compute start-up, power on, reboot).
        """
        return ''

    def host_netns(self, vif):
        """The named network namespace the host end lives in; '' for
        nova-compute's own."""
        return ''

    def reads_by_packet_socket(self, vif):
        """Whether the switch reads the host end through a packet socket,
        before any tc ingress hook (no outbound limit can work there)."""
        return False

    def attach(self, instance, vif):
        """Wire the host end once the pair exists; idempotent."""

    def detach(self, instance, vif):
        """Undo ``bridge`` and ``attach`` before the pair is deleted.

        Must succeed when they ran only in part, or not at all.
        """


class LinuxBridge(Wiring):
    """'bridge': the host end is a port of the network's Linux bridge.

    The bridge is made if missing, as os-vif's old linux_bridge plugin did
    before a tap joined it; it stays on unplug (other ports may use it, and
    the network's agent removes it with the network).
    """

    def check(self, vif):
        naming.bridge_name(vif)

    def bridge(self, instance, vif):
        name = naming.bridge_name(vif)
        net.ensure_bridge(name)
        return name


class Routed(Wiring):
    """'tap': the agent (e.g. Calico's Felix) finds the host end by name
    and routes the port's addresses to it; it must sit in no bridge."""
