/// The usage text of `archip-extstorage` and of every provider script.
public enum Usage {
    public static func text(program: String) -> String {
        var s = """
        usage: \(program) [--config FILE] ACTION
               (or a provider script: ACTION with no arguments)

        The archipelago Ganeti ExtStorage provider. Ganeti runs one script per action, with no
        arguments; everything comes from the environment: VOL_NAME, VOL_SIZE and VOL_NEW_SIZE (MiB),
        VOL_METADATA, VOL_CNAME, VOL_UUID, VOL_SNAPSHOT_NAME, VOL_SNAPSHOT_SIZE, VOL_OPEN_EXCLUSIVE,
        and the disk's parameters as EXTP_* (EXTP_ORIGIN: snapshot:NAME, volume:NAME, file:/path,
        http(s)://URL or pithos:HASHMAP). The store, this node's name and the daemon's folder come
        from the configuration file (default /etc/archip/archip.conf).

        actions:

        """
        for a in Action.allCases {
            s += "  " + a.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0) + a.summary + "\n"
        }
        s += """

        exit status: 0 done, 1 the operation failed, 2 a wrong call (usage, missing or malformed
        variables, unknown parameters). See archip-extstorage(8).
        """
        return s
    }
}
