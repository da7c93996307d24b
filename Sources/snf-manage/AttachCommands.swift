import ArgumentParser
import Cyclades
import Foundation

struct VolumeAttach: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-attach",
        abstract: "Attach an AVAILABLE volume to a server of its user and volume type (Ganeti 3.1).")
    @OptionGroup var common: Common
    @Argument(help: "Volume id.") var id: Int64
    @Option(help: "Server id.") var server: Int64
    @Flag(help: "Wait for Ganeti's job.") var wait = false
    func run() throws {
        let c = try common.open()
        let v = try c.attachVolume(id, server: server)
        let now = wait ? try c.waitVolume(id) : v
        if wait && now.status != .inUse {
            throw CycladesError(.backend, "volume \(id): Ganeti's attach job \(v.backendJobID.map(String.init) ?? "-") failed; it is \(now.status.rawValue)")
        }
        print("volume \(id) (\(now.diskName)): \(now.status.rawValue), server \(server), job \(v.backendJobID.map(String.init) ?? "-")")
    }
}

struct VolumeDetach: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "volume-detach",
        abstract: "Detach a (non-root) volume from its server; it stays, AVAILABLE (Ganeti 3.1).")
    @OptionGroup var common: Common
    @Argument(help: "Volume id.") var id: Int64
    @Flag(help: "Wait for Ganeti's job.") var wait = false
    func run() throws {
        let c = try common.open()
        let v = try c.detachVolume(id)
        let now = wait ? try c.waitVolume(id) : v
        if wait && now.status != .available {
            throw CycladesError(.backend, "volume \(id): Ganeti's detach job \(v.backendJobID.map(String.init) ?? "-") failed; it is \(now.status.rawValue)")
        }
        print("volume \(id) (\(now.diskName)): \(now.status.rawValue), job \(v.backendJobID.map(String.init) ?? "-")")
    }
}
