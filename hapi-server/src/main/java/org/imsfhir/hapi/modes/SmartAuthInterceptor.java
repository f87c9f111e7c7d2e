package org.imsfhir.hapi.modes;

import ca.uhn.fhir.interceptor.api.Hook;
import ca.uhn.fhir.interceptor.api.Interceptor;
import ca.uhn.fhir.interceptor.api.Pointcut;
import ca.uhn.fhir.rest.api.RestOperationTypeEnum;
import ca.uhn.fhir.rest.api.server.RequestDetails;
import ca.uhn.fhir.rest.server.exceptions.AuthenticationException;
import ca.uhn.fhir.rest.server.exceptions.ForbiddenOperationException;
import com.nimbusds.jose.JOSEException;
import com.nimbusds.jose.JWSAlgorithm;
import com.nimbusds.jose.jwk.source.JWKSource;
import com.nimbusds.jose.jwk.source.JWKSourceBuilder;
import com.nimbusds.jose.proc.BadJOSEException;
import com.nimbusds.jose.proc.JWSVerificationKeySelector;
import com.nimbusds.jose.proc.SecurityContext;
import com.nimbusds.jwt.JWTClaimsSet;
import com.nimbusds.jwt.proc.DefaultJWTClaimsVerifier;
import com.nimbusds.jwt.proc.DefaultJWTProcessor;
import java.net.MalformedURLException;
import java.net.URI;
import java.text.ParseException;
import java.util.HashSet;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import org.hl7.fhir.instance.model.api.IBaseConformance;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.Bundle;
import org.hl7.fhir.r4.model.CapabilityStatement;
import org.hl7.fhir.r4.model.CodeableConcept;
import org.hl7.fhir.r4.model.Extension;
import org.hl7.fhir.r4.model.UriType;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Requires an access token from the configured authorization server (Keycloak in the tests)
 * on every request but {@code GET /metadata}, and checks its SMART system scopes.
 *
 * <p>The token is a JWT: its signature is checked with the issuer's published keys (JWKS,
 * fetched and cached), then {@code exp} (60 s leeway), {@code iss} and {@code aud}. A request
 * without a valid token answers 401 with {@code WWW-Authenticate: Bearer}; a valid token whose
 * scopes do not cover the request answers 403 naming the missing scope; both carry an
 * OperationOutcome. Scopes are checked per interaction (see {@link RequestedInteractions}):
 * each entry of a transaction on its own; a conditional create/update/delete also needs the
 * search letter; every resource of a search or history answer needs read or search on its
 * type (so an {@code _include} cannot leak a type the token may not see). Operations
 * ({@code $expunge} ...) need every letter on {@code system/*}. Tokens are never logged.
 */
@Interceptor
public class SmartAuthInterceptor {

	static final String SCOPES_KEY = SmartAuthInterceptor.class.getName() + ".scopes";
	private static final Logger LOG = LoggerFactory.getLogger(SmartAuthInterceptor.class);
	private static final String SMART_SECURITY =
			"http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

	private final SmartAuthSettings settings;
	private final DefaultJWTProcessor<SecurityContext> processor;

	public SmartAuthInterceptor(SmartAuthSettings settings) {
		this.settings = settings;
		JWKSource<SecurityContext> keys;
		try {
			keys = JWKSourceBuilder.create(URI.create(settings.jwksUrl()).toURL()).retrying(true).build();
		} catch (MalformedURLException e) {
			throw new IllegalStateException("ims.auth.jwks-url is not a URL: " + settings.jwksUrl(), e);
		}
		Set<JWSAlgorithm> algorithms = Set.of(JWSAlgorithm.RS256, JWSAlgorithm.RS384, JWSAlgorithm.RS512,
				JWSAlgorithm.PS256, JWSAlgorithm.PS384, JWSAlgorithm.ES256, JWSAlgorithm.ES384, JWSAlgorithm.ES512);
		processor = new DefaultJWTProcessor<>();
		processor.setJWSKeySelector(new JWSVerificationKeySelector<>(algorithms, keys));
		// Mutable sets: the verifier asks contains(null), which Set.of() answers with an NPE.
		processor.setJWTClaimsSetVerifier(new DefaultJWTClaimsVerifier<>(
				new HashSet<>(List.of(settings.audience())),
				new JWTClaimsSet.Builder().issuer(settings.issuer()).build(),
				new HashSet<>(List.of("exp")),
				new HashSet<>()));
	}

	@Hook(Pointcut.SERVER_INCOMING_REQUEST_PRE_HANDLED)
	public void authorize(RequestDetails request, RestOperationTypeEnum operation) {
		if (operation == RestOperationTypeEnum.METADATA) {
			return; // the CapabilityStatement is public, as SMART expects
		}
		SmartScopes scopes = authenticate(request);
		request.getUserData().put(SCOPES_KEY, scopes);
		Set<String> missing = new LinkedHashSet<>();
		for (RequestedInteractions.Interaction wanted : RequestedInteractions.of(request, operation)) {
			String type = wanted.resourceType() == null || wanted.resourceType().isEmpty() ? "*" : wanted.resourceType();
			if (wanted.letter() == 'o') {
				for (char c : "cruds".toCharArray()) {
					if (!scopes.allows("*", c)) {
						missing.add("system/*.cruds");
					}
				}
				continue;
			}
			if (!scopes.allows(type, wanted.letter())) {
				missing.add(SmartScopes.needed(type, wanted.letter()));
			}
			if (wanted.conditional() && !scopes.allows(type, 's')) {
				missing.add(SmartScopes.needed(type, 's'));
			}
		}
		if (!missing.isEmpty()) {
			throw forbidden("the access token lacks scope " + String.join(" ", missing) + " for "
					+ operation.getCode() + (request.getResourceName() == null ? "" : " " + request.getResourceName()));
		}
	}

	/** Every resource of a search or history answer must be readable or searchable by the token. */
	@Hook(Pointcut.SERVER_OUTGOING_RESPONSE)
	public boolean checkOutgoing(RequestDetails request, IBaseResource resource) {
		if (!(request.getUserData().get(SCOPES_KEY) instanceof SmartScopes scopes) || !(resource instanceof Bundle bundle)) {
			return true;
		}
		if (bundle.getType() != Bundle.BundleType.SEARCHSET && bundle.getType() != Bundle.BundleType.HISTORY) {
			return true;
		}
		Set<String> missing = new LinkedHashSet<>();
		for (Bundle.BundleEntryComponent entry : bundle.getEntry()) {
			if (!entry.hasResource()) {
				continue;
			}
			String type = entry.getResource().fhirType();
			if (!type.equals("OperationOutcome") && !scopes.allows(type, 'r') && !scopes.allows(type, 's')) {
				missing.add(SmartScopes.needed(type, 'r'));
			}
		}
		if (!missing.isEmpty()) {
			throw forbidden("the answer holds resources the access token may not read; it lacks scope "
					+ String.join(" ", missing));
		}
		return true;
	}

	/** Announce the token endpoint in the CapabilityStatement (SMART's oauth-uris extension). */
	@Hook(Pointcut.SERVER_CAPABILITY_STATEMENT_GENERATED)
	public IBaseConformance announce(IBaseConformance statement) {
		if (statement instanceof CapabilityStatement capability) {
			for (CapabilityStatement.CapabilityStatementRestComponent rest : capability.getRest()) {
				CapabilityStatement.CapabilityStatementRestSecurityComponent security = rest.getSecurity();
				security.getService().clear();
				security.addService(new CodeableConcept().addCoding(
						new org.hl7.fhir.r4.model.Coding(
								"http://terminology.hl7.org/CodeSystem/restful-security-service", "SMART-on-FHIR", null)));
				security.getExtension().removeIf(e -> SMART_SECURITY.equals(e.getUrl()));
				Extension uris = security.addExtension().setUrl(SMART_SECURITY);
				uris.addExtension("token", new UriType(settings.tokenUrl()));
			}
		}
		// Changed in place; null lets the other hooks of this pointcut run too (a value would end the chain).
		return null;
	}

	private SmartScopes authenticate(RequestDetails request) {
		String header = request.getHeader("Authorization");
		if (header == null || !header.regionMatches(true, 0, "Bearer ", 0, 7) || header.length() <= 7) {
			throw unauthorized("an access token is required (Authorization: Bearer)", null);
		}
		JWTClaimsSet claims;
		try {
			claims = processor.process(header.substring(7).trim(), null);
		} catch (ParseException | BadJOSEException | JOSEException e) {
			// Nimbus's messages name the failed check ("Expired JWT", "JWT audience rejected"), never the token.
			LOG.info("rejected an access token: {}", e.getMessage());
			throw unauthorized("the access token was rejected: " + e.getMessage(), "invalid_token");
		}
		Object scope = claims.getClaim("scope");
		return SmartScopes.parse(scope instanceof String text ? text : null);
	}

	private static AuthenticationException unauthorized(String message, String error) {
		AuthenticationException exception = new AuthenticationException(message);
		String challenge = "Bearer realm=\"ims-fhir\"" + (error == null ? "" : ", error=\"" + error + "\"");
		exception.addResponseHeader("WWW-Authenticate", challenge);
		return exception;
	}

	private static ForbiddenOperationException forbidden(String message) {
		ForbiddenOperationException exception = new ForbiddenOperationException(message);
		exception.addResponseHeader("WWW-Authenticate", "Bearer realm=\"ims-fhir\", error=\"insufficient_scope\"");
		return exception;
	}
}
