import ArgumentParser

@main
struct Meshwork: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshwork",
        abstract: "A service mesh: sidecar proxy, controller, gateway and CLI in one binary.",
        subcommands: [
            SidecarCommand.self, GatewayCommand.self, RunCommand.self, ControllerCommand.self, CtlCommand.self,
            DemoAppCommand.self, DemoCommand.self,
        ]
    )
}
