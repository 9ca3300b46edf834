//! The names the CSI node plugin (`blockproxy-csi`), the operator's webhook and the sidecar agree
//! on for the `/dev/fuse` hand-over (docs/adr/0008-csi-fuse-handover.md).

/// The CSI driver name: the `driver` of a Pod's inline volume and of the CSIDriver object.
pub const CSI_DRIVER_NAME: &str = "blockproxy.io";
/// The inline volume's attribute naming the blockproxy volume to serve.
pub const CSI_VOLUME_ID_ATTRIBUTE: &str = "volumeID";
/// The emptyDir the webhook adds to a Pod with the inline volume; the plugin finds it through the
/// kubelet's directory, the sidecar mounts it at [`CSI_HANDOVER_MOUNT_PATH`]. The socket is there.
pub const CSI_HANDOVER_VOLUME: &str = "blockproxy-fuse-handover";
/// Where the sidecar sees [`CSI_HANDOVER_VOLUME`].
pub const CSI_HANDOVER_MOUNT_PATH: &str = "/var/run/blockproxy-fuse";

/// The hand-over socket's file name for a volume, in [`CSI_HANDOVER_VOLUME`].
pub fn csi_socket_name(volume: &str) -> String {
    format!("{volume}.sock")
}
