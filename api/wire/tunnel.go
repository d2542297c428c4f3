package wire

// SSHUpgrade is the protocol of GET /v1/machines/{name}/ssh. The caller
// sends "Connection: Upgrade" and "Upgrade: vmfest-ssh"; the server
// answers "101 Switching Protocols", after which the connection carries
// the machine's SSH stream both ways, as if the caller had connected to
// the guest's port 22 itself.
const SSHUpgrade = "vmfest-ssh"
