import Cyclades
import Foundation
import Hummingbird
import NIOCore
import NIOHTTP1

typealias Volume = Cyclades.Volume

/// The Cinder-compatible volume API and the compute extensions, on the
/// registration layer. Handlers are synchronous (SQLite, libcurl to RAPI) and
/// run off the event loops. The routes are Hummingbird route groups, one per
/// API prefix (VolumeRoutes, ComputeRoutes, ImageRoutes): the router is the
/// only route table, and the OpenAPI check reads it (`router().routes`).
public final class CycladesAPI: @unchecked Sendable {
    public let registry: Registry
    /// The store and this node's archip serve folder, for POST/DELETE /snapshots (nil: 501).
    public var storePath: String?
    public var runtimeDir: String = "/run/archip"
    public var log: (String) -> Void = { line in FileHandle.standardError.write(Data((line + "\n").utf8)) }
    public static let maxBody = 1 << 20

    public init(registry: Registry) {
        self.registry = registry
    }

    // MARK: routes

    public enum Method: String, Sendable, CaseIterable { case GET, POST, PUT, DELETE }

    /// What a handler sees.
    public struct Call: Sendable {
        public var method: Method
        public var path: String
        public var params: [String: String]
        public var query: [String: String]
        public var body: Data?
        public var user: User?
        /// scheme://host:port of the request, for links.
        public var base: String
        /// The API prefix the request came through (/volume/v3, /compute/v2.1, ...).
        public var prefix: String

        func param(_ name: String) -> String { params[name] ?? "" }
        var requireUser: User {
            get throws {
                guard let user else { throw CycladesError(.unauthorized, "authentication required") }
                return user
            }
        }
    }

    /// What a handler answers: the status and JSON bytes (made off the event loop).
    public struct Reply: Sendable {
        public var status: Int
        public var body: Data?
        /// Answer with `Connection: close` (the request stream cannot go on).
        public var close = false

        static func empty(_ status: Int) -> Reply { Reply(status: status, body: nil) }
    }

    // MARK: faults

    static func faultName(_ kind: CycladesError.Kind) -> (String, Int) {
        switch kind {
        case .badRequest: return ("badRequest", 400)
        case .itemNotFound: return ("itemNotFound", 404)
        case .overLimit: return ("overLimit", 413)
        case .conflict: return ("buildInProgress", 409)
        case .notImplemented: return ("notImplemented", 501)
        case .unauthorized: return ("unauthorized", 401)
        case .backend: return ("serviceUnavailable", 503)
        }
    }

    /// An OpenStack fault: `{"<name>": {"code", "message", "details"}}`.
    struct Fault: Encodable, Sendable {
        var code: Int
        var message: String
        var details = ""
    }

    static func fault(_ name: String, _ code: Int, _ message: String) -> Reply {
        Reply(status: code, body: try? ResponseEncoder.encode(Keyed(name, Fault(code: code, message: message))))
    }

    /// A fault after which the connection is closed (its request stream is broken).
    static func fault(_ name: String, _ code: Int, _ message: String, close: Bool) -> Reply {
        var r = fault(name, code, message)
        r.close = close
        return r
    }

    /// One line for a request whose body the HTTP parser refused.
    static func framingMessage(_ e: HTTPParserError, _ request: Request) -> String {
        let length = request.headers[.contentLength].map { " (Content-Length: \($0.prefix(40)))" } ?? ""
        switch e {
        case .invalidEOFState: return "the request body ended before its Content-Length\(length)"
        case .invalidContentLength: return "the request's Content-Length is not a valid length\(length)"
        default: return "the request is not valid HTTP/1.1: \(e)\(length)"
        }
    }

    static func fault(_ e: CycladesError) -> Reply {
        let (name, code) = faultName(e.kind)
        return fault(name, code, e.message)
    }

    // MARK: serving

    /// Runs a handler: authentication, body rules, the handler off the event loop, faults.
    func serve(_ handler: @escaping @Sendable (Call) throws -> Reply, auth needsAuth: Bool, prefix: String,
               _ request: Request, _ params: [String: String]) async -> Reply {
        do {
            var body: Data? = nil
            if request.method == .post || request.method == .put {
                let buffer: ByteBuffer
                do {
                    buffer = try await request.body.collect(upTo: Self.maxBody)
                } catch is NIOTooManyBytesError {
                    return Self.fault("requestEntityTooLarge", 413, "the request body is larger than \(Self.maxBody) bytes")
                } catch let e as HTTPParserError {
                    // The client's framing: a body that ends before its Content-Length,
                    // a length no body can have. The connection cannot carry another request.
                    return Self.fault("badRequest", 400, Self.framingMessage(e, request), close: true)
                }
                if buffer.readableBytes > 0 {
                    if let ct = request.headers[.contentType], !ct.lowercased().contains("json") {
                        return Self.fault("badRequest", 400, "Content-Type must be application/json, not \(ct)")
                    }
                    body = Data(buffer.readableBytesView)
                }
            }
            let token = request.headers.first { $0.name.canonicalName == "x-auth-token" }?.value
            let host = request.head.authority ?? "localhost"
            let query = Self.parseQuery(request.uri.query)
            let method = Method(rawValue: request.method.rawValue) ?? .GET
            let registry = self.registry
            let bodyData = body, path = request.uri.path
            return try await blocking {
                var user: User? = nil
                if needsAuth {
                    guard let token, !token.isEmpty, let u = try registry.user(token: token) else {
                        throw CycladesError(.unauthorized, token == nil || token!.isEmpty ? "no X-Auth-Token" : "the X-Auth-Token is not valid")
                    }
                    user = u
                }
                let call = Call(method: method, path: path, params: params, query: query, body: bodyData, user: user,
                                base: "http://\(host)", prefix: prefix)
                do {
                    return try handler(call)
                } catch let e as CycladesError {
                    return Self.fault(e)
                }
            }
        } catch let e as CycladesError {
            return Self.fault(e)
        } catch {
            return Self.fault("computeFault", 500, "internal error: \(type(of: error))")
        }
    }

    static func prefix(of template: String) -> String {
        let parts = template.split(separator: "/")
        return parts.count >= 2 ? "/" + parts[0] + "/" + parts[1] : template
    }

    static func parseQuery(_ q: String?) -> [String: String] {
        guard let q, !q.isEmpty else { return [:] }
        var out: [String: String] = [:]
        for pair in q.split(separator: "&") {
            // "=", "=v" and "k=" are all possible: split drops empty pieces, so keep them by hand.
            let eq = pair.firstIndex(of: "=")
            let kv = eq.map { [String(pair[..<$0]), String(pair[pair.index(after: $0)...])] } ?? [String(pair)]
            let k = kv[0].replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? kv[0]
            let v = kv.count > 1 ? (kv[1].replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? kv[1]) : ""
            out[k] = v
        }
        return out
    }

    /// The Hummingbird router: the route groups of every service, the request
    /// log, and OpenStack-shaped faults for what no route answers.
    public func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.middlewares.add(FaultAndLogMiddleware(api: self))
        addVolumeRoutes(router)
        addComputeRoutes(router)
        addImageRoutes(router)
        return router
    }

    /// One route group (an API prefix): each handler added runs through
    /// `serve` (token unless `auth: false`, body rules, off the event loop, faults).
    struct Endpoints {
        let api: CycladesAPI
        let group: RouterGroup<BasicRequestContext>
        let path: String

        init(_ api: CycladesAPI, _ router: Router<BasicRequestContext>, _ path: String) {
            self.api = api
            self.group = router.group(RouterPath(path))
            self.path = path
        }

        func on(_ method: HTTPRequest.Method, _ sub: String, auth: Bool, _ handler: @escaping @Sendable (Call) throws -> Reply) {
            let api = self.api
            // Links are made under the API prefix the request came through (/volume/v3, /compute/v2.1, ...).
            let prefix = CycladesAPI.prefix(of: sub.isEmpty ? path : path + "/" + sub)
            group.on(RouterPath(sub), method: method) { request, context -> Response in
                var params: [String: String] = [:]
                for (k, v) in context.parameters { params[String(k)] = String(v) }
                return CycladesAPI.response(await api.serve(handler, auth: auth, prefix: prefix, request, params))
            }
        }

        func get(_ sub: String = "", auth: Bool = true, _ h: @escaping @Sendable (Call) throws -> Reply) { on(.get, sub, auth: auth, h) }
        func post(_ sub: String, _ h: @escaping @Sendable (Call) throws -> Reply) { on(.post, sub, auth: true, h) }
        func put(_ sub: String, _ h: @escaping @Sendable (Call) throws -> Reply) { on(.put, sub, auth: true, h) }
        func delete(_ sub: String, _ h: @escaping @Sendable (Call) throws -> Reply) { on(.delete, sub, auth: true, h) }
    }

    static func response(_ r: Reply) -> Response {
        var fields = HTTPFields()
        if r.body != nil { fields[.contentType] = "application/json" }
        let body = r.body.map { ResponseBody(byteBuffer: ByteBuffer(bytes: $0)) } ?? ResponseBody()
        if r.body == nil { fields[.contentLength] = "0" }
        if r.close { fields[.connection] = "close" }
        return Response(status: .init(code: r.status), headers: fields, body: body)
    }
}

/// One log line per request (method, path, status, time), and an OpenStack
/// fault for anything that escapes a handler (no route: 404, wrong method: 405).
struct FaultAndLogMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let api: CycladesAPI

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        var response: Response
        do {
            response = try await next(request, context)
        } catch let e as HTTPError {
            let r: CycladesAPI.Reply
            switch e.status.code {
            case 404: r = CycladesAPI.fault("itemNotFound", 404, "no such resource: \(request.method.rawValue) \(request.uri.path)")
            case 405: r = CycladesAPI.fault("badMethod", 405, "\(request.method.rawValue) is not allowed on \(request.uri.path)")
            case 413: r = CycladesAPI.fault("requestEntityTooLarge", 413, "the request body is larger than \(CycladesAPI.maxBody) bytes")
            case 400..<500: r = CycladesAPI.fault("badRequest", e.status.code, e.body ?? e.status.reasonPhrase)
            default: r = CycladesAPI.fault("computeFault", 500, "internal error")
            }
            response = CycladesAPI.response(r)
        } catch {
            response = CycladesAPI.response(CycladesAPI.fault("computeFault", 500, "internal error: \(type(of: error))"))
        }
        let ms = Double((ContinuousClock.now - start).components.attoseconds) / 1e15 + Double((ContinuousClock.now - start).components.seconds) * 1000
        api.log("\(request.method.rawValue) \(request.uri.description) \(response.status.code) \(String(format: "%.1f", ms))ms")
        return response
    }
}

/// Runs blocking work (SQLite, RAPI through libcurl) on a dispatch thread, not on an event loop.
func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { c in
        DispatchQueue.global().async { c.resume(with: Result { try body() }) }
    }
}
